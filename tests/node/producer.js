// Publishes one tag-update event with celery-node, as a Node.js CRM integration would.
// usage: node producer.js <redis broker url> <queue> '<event as JSON>'
const celery = require("celery-node");

const [brokerUrl, queue, eventJson] = process.argv.slice(2);
const client = celery.createClient(brokerUrl, brokerUrl, queue);
const task = client.createTask("tagging_worker.update_call_tags");
const result = task.applyAsync([JSON.parse(eventJson)]);
console.log(result.taskId);
// Give the LPUSH a moment to reach Redis, then close the connections so the process exits.
setTimeout(() => client.disconnect().then(() => process.exit(0)), 500);
