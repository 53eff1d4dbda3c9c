-- Machine identities: a bot is a user without a password, made by an administrator with its
-- roles, that joins with a one-time bot token and renews its own short-lived credentials.
-- Deleting the user (or revoking its certificates) ends it like any user.
CREATE TABLE bots (
    name       TEXT PRIMARY KEY REFERENCES users (name) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);

-- One-time join tokens of bots; only a hash is kept.
CREATE TABLE bot_tokens (
    token_hash TEXT PRIMARY KEY,
    bot_name   TEXT NOT NULL REFERENCES bots (name) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX bot_tokens_bot ON bot_tokens (bot_name);
