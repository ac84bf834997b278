-- One row that Ping rewrites while the store's writes are failing, to learn
-- when the database accepts writes again (readiness, store/health.go).

CREATE TABLE write_probe (
	id INTEGER PRIMARY KEY,
	at BIGINT NOT NULL
);
