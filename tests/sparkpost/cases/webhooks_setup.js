// webhooks_setup: webhooks.create, list, get, update and validate.
// args: {target, username, password}. Result: what each call answered.
'use strict';

module.exports = async function(sp, args) {
  const created = await sp.webhooks.create({
    name: 'events to the test receiver',
    target: args.target,
    events: ['injection', 'delivery', 'bounce', 'delay'],
    auth_type: 'basic',
    auth_request_details: { username: args.username, password: args.password }
  });
  const id = created.results.id;
  const list = await sp.webhooks.list();
  const got = await sp.webhooks.get(id);
  const updated = await sp.webhooks.update(id, { name: 'renamed by the client' });
  const validated = await sp.webhooks.validate(id, { message: { msys: {} } });
  return {
    id: id,
    signing_secret: created.results.signing_secret,
    listed: list.results.map(function(w) { return w.id; }),
    got: { name: got.results.name, target: got.results.target, events: got.results.events, auth_type: got.results.auth_type },
    updated_name: updated.results.name,
    validate_msg: validated.results.msg,
    validate_status: validated.results.response.status
  };
};
