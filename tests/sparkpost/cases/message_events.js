// message_events: the client's older messageEvents.search (GET
// /api/v1/message-events). args: {params}.
'use strict';

module.exports = async function(sp, args) {
  const res = await sp.messageEvents.search(args.params || {});
  return { total_count: res.total_count, types: res.results.map(function(e) { return e.type; }) };
};
