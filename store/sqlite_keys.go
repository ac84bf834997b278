package store

import (
	"context"
	"strings"
)

// ListKeys implements Store. The page is read in index order
// (api_keys_active, or api_keys_active_subaccount with a subaccount) and
// stops after Limit+1 matching rows; label and grant filters are applied on
// the way.
func (s *sqliteStore) ListKeys(ctx context.Context, f KeyFilter) ([]*Key, string, error) {
	cur, after, err := decodeKeyCursor(f.Cursor)
	if err != nil {
		return nil, "", err
	}
	n := f.pageSize()
	where := []string{"revoked_at IS NULL"}
	var args []any
	if f.Subaccount != nil {
		where = append(where, "subaccount = ?")
		args = append(args, *f.Subaccount)
	}
	if after {
		where = append(where, "(created_at > ? OR (created_at = ? AND id > ?))")
		args = append(args, us(cur.created), us(cur.created), cur.id)
	}
	if f.Label != "" {
		where = append(where, "instr(lower(label), lower(?)) > 0")
		args = append(args, f.Label)
	}
	if f.Grant != "" {
		where = append(where, "EXISTS (SELECT 1 FROM json_each(api_keys.grants) WHERE value = ?)")
		args = append(args, f.Grant)
	}
	args = append(args, n+1)
	rows, err := s.r.QueryContext(ctx, `SELECT `+sqliteKeyCols+` FROM api_keys
		WHERE `+strings.Join(where, " AND ")+` ORDER BY created_at, id LIMIT ?`, args...)
	if err != nil {
		return nil, "", sqliteErr("list keys", err)
	}
	defer rows.Close()
	ks := make([]*Key, 0, min(n+1, 256))
	for rows.Next() {
		k, err := scanSQLiteKey(rows)
		if err != nil {
			return nil, "", sqliteErr("list keys", err)
		}
		ks = append(ks, k)
	}
	if err := rows.Err(); err != nil {
		return nil, "", sqliteErr("list keys", err)
	}
	page, next := finishKeyPage(ks, n)
	return page, next, nil
}
