// sending_domains: with args.create, sendingDomains.create and the DKIM
// record to publish; else sendingDomains.update, verify and get.
// args: {domain, create, update, verify}. Result: what the calls answered.
'use strict';

module.exports = async function(sp, args) {
  if (args.create) {
    const created = await sp.sendingDomains.create({ domain: args.domain });
    return { name: created.results.dkim_record_name, value: created.results.dkim_record_value };
  }
  const updated = await sp.sendingDomains.update(args.domain, args.update);
  const verified = await sp.sendingDomains.verify(args.domain, args.verify);
  const got = await sp.sendingDomains.get(args.domain);
  const list = await sp.sendingDomains.list();
  return {
    updated: updated.results,
    verified: verified.results,
    got: { shared: got.results.shared_with_subaccounts, status: got.results.status },
    listed_status: list.results.map(function(d) { return d.status; })
  };
};
