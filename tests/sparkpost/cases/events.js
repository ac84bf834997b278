// events: events.searchMessage with SparkPost's filters, paging with the
// cursor of links.next until the last page. args: {params, maxPages}.
'use strict';

module.exports = async function(sp, args) {
  const params = Object.assign({}, args.params || {});
  const pages = [];
  for (let i = 0; i < (args.maxPages || 100); i++) {
    const res = await sp.events.searchMessage(params);
    pages.push({
      total_count: res.total_count,
      events: res.results.map(function(e) {
        return { type: e.type, event_id: e.event_id, rcpt_to: e.rcpt_to, campaign_id: e.campaign_id,
          message_id: e.message_id, subject: e.subject, bounce_class: e.bounce_class };
      }),
      next: (res.links && res.links.next) || null
    });
    if (!res.links || !res.links.next) {
      break;
    }
    // links.next is a path with a query: take its cursor, keep the filters.
    params.cursor = new URL(res.links.next, 'http://x').searchParams.get('cursor');
  }
  return pages;
};
