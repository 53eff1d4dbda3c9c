//! Users who sign in through an OpenID provider: found by (provider, subject), created at
//! their first sign-in, their provider-given role bindings replaced at every sign-in.

use sqlx::Row;

use super::*;

/// The password hash of a user made by single sign-on: no password ever matches it.
pub const NO_PASSWORD: &str = "!sso";

/// The outcome of [`Store::sso_sign_in`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SsoSignIn {
    /// Signed in as this user.
    User {
        /// The user's name.
        name: String,
        /// Made by this sign-in.
        created: bool,
        /// The roles bound from the claims (those that exist).
        roles: Vec<String>,
    },
    /// First sign-in, and the name the claims give belongs to another user.
    NameTaken,
    /// The user is disabled.
    Disabled,
}

/// The origin of the role bindings a provider's claims make.
fn origin(provider: &str) -> String {
    format!("sso:{provider}")
}

impl Store {
    /// Signs in `(provider, subject)`: the user linked to it, or a new user named `name`
    /// when there is none (unless the name is taken); then the bindings from this provider
    /// become exactly `roles` (those that exist; bindings an administrator made stay).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn sso_sign_in(
        &self,
        provider: &str,
        subject: &str,
        name: &str,
        roles: &[String],
        now_ms: i64,
    ) -> Result<SsoSignIn, StoreError> {
        let mut tx = self.begin_write().await?;
        let linked = sqlx::query(
            "SELECT i.user_name, u.disabled FROM sso_identities i \
             JOIN users u ON u.name = i.user_name WHERE i.provider = $1 AND i.subject = $2",
        )
        .bind(provider)
        .bind(subject)
        .fetch_optional(&mut *tx)
        .await?;
        let (user, created) = match linked {
            Some(row) => {
                let disabled: i64 = row.try_get(1)?;
                if disabled != 0 {
                    return Ok(SsoSignIn::Disabled);
                }
                (row.try_get::<String, _>(0)?, false)
            }
            None => {
                let made = sqlx::query(
                    "INSERT INTO users (name, password_hash, created_at, id) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(NO_PASSWORD)
                .bind(now_ms)
                .bind(new_id()?)
                .execute(&mut *tx)
                .await?;
                if made.rows_affected() != 1 {
                    return Ok(SsoSignIn::NameTaken);
                }
                sqlx::query(
                    "INSERT INTO sso_identities (provider, subject, user_name, created_at, \
                     last_login_at) VALUES ($1, $2, $3, $4, $4)",
                )
                .bind(provider)
                .bind(subject)
                .bind(name)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                (name.to_owned(), true)
            }
        };
        sqlx::query(
            "UPDATE sso_identities SET last_login_at = $3 WHERE provider = $1 AND subject = $2",
        )
        .bind(provider)
        .bind(subject)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM role_bindings WHERE user_name = $1 AND origin = $2")
            .bind(&user)
            .bind(origin(provider))
            .execute(&mut *tx)
            .await?;
        let mut bound = Vec::new();
        for role in roles {
            let done = sqlx::query(
                "INSERT INTO role_bindings (user_name, role_name, origin) \
                 SELECT $1, name, $3 FROM roles WHERE name = $2 \
                 ON CONFLICT (user_name, role_name) DO NOTHING",
            )
            .bind(&user)
            .bind(role)
            .bind(origin(provider))
            .execute(&mut *tx)
            .await?;
            let exists = done.rows_affected() == 1
                || sqlx::query("SELECT 1 FROM roles WHERE name = $1")
                    .bind(role)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
            if exists {
                bound.push(role.clone());
            }
        }
        tx.commit().await?;
        Ok(SsoSignIn::User {
            name: user,
            created,
            roles: bound,
        })
    }
}
