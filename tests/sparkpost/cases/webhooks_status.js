// webhooks_status: webhooks.getBatchStatus. args: {id, limit}.
'use strict';

module.exports = async function(sp, args) {
  const res = await sp.webhooks.getBatchStatus(args.id, { limit: args.limit || 1000 });
  return res.results;
};
