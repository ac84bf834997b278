// subaccounts: subaccounts.create (with setup_api_key), list, get, update
// and get again. args: {name, key_label, key_grants}. Result: what each
// call answered.
'use strict';

module.exports = async function(sp, args) {
  const created = await sp.subaccounts.create({
    name: args.name,
    setup_api_key: true,
    key_label: args.key_label,
    key_grants: args.key_grants
  });
  // The client takes ids as strings (SparkPost's answer has a number).
  const id = String(created.results.subaccount_id);
  const list = await sp.subaccounts.list();
  const got = await sp.subaccounts.get(id);
  const updated = await sp.subaccounts.update(id, { name: args.name + ' (renamed)', status: 'suspended' });
  const after = await sp.subaccounts.get(id);
  return {
    created: created.results,
    listed: list.results.map(function(s) { return { id: s.id, name: s.name, status: s.status }; }),
    got: got.results,
    updated: updated.results,
    after: { name: after.results.name, status: after.results.status }
  };
};
