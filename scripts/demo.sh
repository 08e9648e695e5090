#!/bin/sh
# make demo's main job, run inside the lab: emberd builds a template from
# an image of Ember's store, creates a sandbox from it and runs a command
# in it, then ends it.
#
# Usage: demo.sh HOME REF   (HOME: Ember's home holding the image REF)
set -eu
home=${1:?usage: demo.sh HOME REF}
ref=${2:?usage: demo.sh HOME REF}
state=$(mktemp -d /tmp/ember-demo-XXXXXX)
export EMBERD_SOCKET="$state/emberd.sock"
emberd --state-dir "$state" --socket "$EMBERD_SOCKET" --image-home "$home" --log-format text --level warn &
emberd_pid=$!
sandbox=""
cleanup() {
	[ -n "$sandbox" ] && ember sandbox kill "$sandbox" >/dev/null 2>&1 || true
	kill "$emberd_pid" 2>/dev/null || true
	wait "$emberd_pid" 2>/dev/null || true
	rm -rf "$state"
}
trap cleanup EXIT
i=0
until ember sandbox ls >/dev/null 2>&1; do
	i=$((i + 1))
	[ "$i" -lt 300 ] || { echo "demo: emberd did not answer" >&2; exit 1; }
	sleep 0.1
done
echo "== ember template build --name demo --image $ref (boot, wait for the agent, snapshot)"
ember template build --name demo --image "$ref" --mem-mib 256
echo "== ember sandbox create demo (restore from the snapshot)"
sandbox=$(ember sandbox create demo)
echo "$sandbox"
echo "== ember sandbox exec $sandbox -- ..."
ember sandbox exec "$sandbox" -- /bin/bash -c 'echo "hello from $(. /etc/os-release; echo $PRETTY_NAME) in an Ember sandbox, kernel $(uname -r)"; python3 -c "import uuid; print(uuid.uuid4())"'
echo "== ember sandbox stats $sandbox"
ember sandbox stats "$sandbox"
