// webhooks_delete: webhooks.delete, then webhooks.get must fail with 404.
// args: {id}.
'use strict';

module.exports = async function(sp, args) {
  await sp.webhooks.delete(args.id);
  try {
    await sp.webhooks.get(args.id);
  } catch (err) {
    return { get_after_delete: err.statusCode };
  }
  return { get_after_delete: 200 };
};
