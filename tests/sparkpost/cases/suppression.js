// suppression: suppressionList.upsert, list paged with the cursor of the
// "next" link, get, delete, and get after the delete (404).
// args: {entries, per_page, get, delete}. Result: what each call answered.
'use strict';

module.exports = async function(sp, args) {
  const upserted = await sp.suppressionList.upsert(args.entries);
  const params = { per_page: args.per_page, cursor: 'initial' };
  const pages = [];
  for (let i = 0; i < 20; i++) {
    const res = await sp.suppressionList.list(params);
    const next = (res.links || []).find(function(l) { return l.rel === 'next'; });
    pages.push({
      total_count: res.total_count,
      recipients: res.results.map(function(e) { return e.recipient + '/' + e.type; }),
      next: next ? next.href : null
    });
    if (!next) {
      break;
    }
    params.cursor = new URL(next.href, 'http://x').searchParams.get('cursor');
  }
  const got = await sp.suppressionList.get(args.get);
  await sp.suppressionList.delete(args.delete);
  let afterStatus = 200;
  try {
    await sp.suppressionList.get(args.delete);
  } catch (err) {
    afterStatus = err.statusCode;
  }
  return {
    upsert_message: upserted.results.message,
    pages: pages,
    got: got.results.map(function(e) { return { recipient: e.recipient, type: e.type, source: e.source, description: e.description }; }),
    after_delete_status: afterStatus
  };
};
