#!/usr/bin/env bash
# The on-call story of the README, run for real against the fake API: a key rotated under
# the workers, two events the API refuses, then the fix and the replay. Uses Redis database 3
# on 127.0.0.1 (keys with the prefix `tagging` only) and writes its outputs to /tmp/oncall.
set -u
mkdir -p /tmp/oncall
cd "$(dirname "$0")/.."
T=.venv/bin/tagging-worker
export TAGGING_QUEUE=tagging TAGGING_KEY_PREFIX=tagging TAGGING_BROKER_URL=redis://127.0.0.1:6379/3
export TAGGING_API_ENDPOINT=127.0.0.1:18383 TAGGING_API_PROTOCOL=http
export ACCESS_KEY_ID=fake-access-key-id ACCESS_KEY_SECRET=fake-access-key-secret
export ALIBABA_CLOUD_ECS_METADATA_DISABLED=true TAGGING_METRICS_PORT=19810 TAGGING_METRICS_HOST=127.0.0.1
export TAGGING_CIRCUIT_SYSTEMIC_COOLDOWN_SECONDS=10 COLUMNS=160
redis-cli -n 3 ping >/dev/null
redis-cli -n 3 --scan --pattern 'tagging*' | xargs -r redis-cli -n 3 del >/dev/null
redis-cli -n 3 del tagging _kombu.binding.tagging unacked unacked_index unacked_mutex >/dev/null
$T fake-api --port 18383 > /tmp/oncall/fake.log 2>&1 & FAKE=$!
sleep 1
FAKE_URL=http://127.0.0.1:18383/_fake
$T worker --concurrency 4 > /tmp/oncall/worker.log 2>&1 & W=$!
sleep 4
# the key is rotated under the workers
curl -s -X POST $FAKE_URL/credentials -d '{"fake-access-key-id": "rotated-secret"}' >/dev/null
# two calls whose tags the API refuses
for c in call-7f3a9c01 call-7f3a9c02; do
  curl -s -X POST $FAKE_URL/faults -d "{\"kind\": \"error\", \"call_id\": \"$c\", \"code\": \"InvalidParameter.Tags\", \"http_status\": 400, \"message\": \"The tag 'VIP客户!!' is not allowed.\"}" >/dev/null
done
for i in $(seq -w 1 40); do echo "{\"call_id\": \"call-7f3a9c$i\", \"tags\": [\"有意向\", \"需跟进\"], \"source\": \"crm\"}"; done | $T publish --file - > /tmp/oncall/ids.txt
sleep 3
echo '$ tagging-worker status' > /tmp/oncall/status_open.txt
$T status >> /tmp/oncall/status_open.txt 2>&1
grep '"level": "error"' /tmp/oncall/worker.log > /tmp/oncall/error_lines.txt
# the fix: the new secret reaches the workers (here: the fake API accepts the old one again)
curl -s -X POST $FAKE_URL/credentials -d '{"fake-access-key-id": "fake-access-key-secret"}' >/dev/null
sleep 14
echo '$ tagging-worker status' > /tmp/oncall/status_after.txt
$T status >> /tmp/oncall/status_after.txt 2>&1
echo '$ tagging-worker dead list' > /tmp/oncall/dead_list.txt
$T dead list >> /tmp/oncall/dead_list.txt 2>&1
ID=$($T dead list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
echo "\$ tagging-worker dead show $ID" > /tmp/oncall/dead_show.txt
$T dead show $ID >> /tmp/oncall/dead_show.txt 2>&1
curl -s -X DELETE $FAKE_URL/faults >/dev/null
echo '$ tagging-worker dead replay --all --reason permanent_error --dry-run' > /tmp/oncall/dead_dry.txt
$T dead replay --all --reason permanent_error --dry-run >> /tmp/oncall/dead_dry.txt 2>&1
echo '$ tagging-worker dead replay --all --reason permanent_error' > /tmp/oncall/dead_replay.txt
$T dead replay --all --reason permanent_error >> /tmp/oncall/dead_replay.txt 2>&1
sleep 3
echo '$ tagging-worker status --no-workers' > /tmp/oncall/status_end.txt
$T status --no-workers >> /tmp/oncall/status_end.txt 2>&1
curl -s 127.0.0.1:19810/metrics | grep -E '^tagging_(events_total|api_calls_total|dead_letters_total|api_circuit|api_rate )' > /tmp/oncall/metrics.txt
kill $W; wait $W 2>/dev/null; kill $FAKE
redis-cli -n 3 --scan --pattern 'tagging*' | xargs -r redis-cli -n 3 del >/dev/null
redis-cli -n 3 del tagging _kombu.binding.tagging unacked unacked_index unacked_mutex >/dev/null
