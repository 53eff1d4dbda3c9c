-- Single sign-on: a user signed in through an OpenID provider is found again by the
-- provider's name and the token's `sub` (never by a name a provider asserts, so a provider
-- cannot take over an existing local user of the same name).
CREATE TABLE sso_identities (
    provider      TEXT NOT NULL,
    subject       TEXT NOT NULL,
    user_name     TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    created_at    BIGINT NOT NULL,
    last_login_at BIGINT NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX sso_identities_user ON sso_identities (user_name);

-- Where a role binding comes from: '' an administrator, 'sso:<provider>' the claims of the
-- user's last sign-in there (replaced at every sign-in).
ALTER TABLE role_bindings ADD COLUMN origin TEXT NOT NULL DEFAULT '';
