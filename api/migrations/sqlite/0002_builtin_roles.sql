-- Built-in roles: admin may reach every resource and administer BAMF; everyone starts
-- with no access (default deny). Rules are refined by the RBAC work.
INSERT INTO roles (name, rules, builtin, created_at) VALUES
    ('admin', '{"allow":[{"names":["*"]}],"deny":[]}', 1, 0),
    ('everyone', '{"allow":[],"deny":[]}', 1, 0);
