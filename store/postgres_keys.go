package store

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5"
)

// ListKeys implements Store. The page is read in index order
// (api_keys_active, or api_keys_active_subaccount with a subaccount) and
// stops after Limit+1 matching rows; a grant filter may use api_keys_grants.
func (s *pgStore) ListKeys(ctx context.Context, f KeyFilter) ([]*Key, string, error) {
	cur, after, err := decodeKeyCursor(f.Cursor)
	if err != nil {
		return nil, "", err
	}
	n := f.pageSize()
	where := []string{"revoked_at IS NULL"}
	var args pgArgs
	if f.Subaccount != nil {
		where = append(where, "subaccount = "+args.add(*f.Subaccount))
	}
	if after {
		where = append(where, "(created_at, id) > ("+args.add(cur.created)+", "+args.add(cur.id)+")")
	}
	if f.Label != "" {
		// lower() of both sides: the filter ignores case like SQLite's
		// (for ASCII letters; PostgreSQL's lower() also folds others).
		where = append(where, "strpos(lower(label), lower("+args.add(f.Label)+")) > 0")
	}
	if f.Grant != "" {
		where = append(where, "grants @> ARRAY["+args.add(f.Grant)+"]::text[]")
	}
	rows, err := s.pool.Query(ctx, `SELECT `+pgKeyCols+` FROM api_keys
		WHERE `+strings.Join(where, " AND ")+` ORDER BY created_at, id LIMIT `+args.add(n+1), args...)
	if err != nil {
		return nil, "", pgErr("list keys", err)
	}
	ks, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*Key, error) { return scanPGKey(r) })
	if err != nil {
		return nil, "", pgErr("list keys", err)
	}
	page, next := finishKeyPage(ks, n)
	return page, next, nil
}
