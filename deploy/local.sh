#!/usr/bin/env bash
# The whole festa deployment on loopback, TLS and node authentication on: a CA, the server
# (SuperLink + console), three sites with different tasks and their own phantom data.
#
#   deploy/local.sh up       certificates, server, register the sites, start the sites
#   deploy/local.sh run      submit a small 2-round run with `flwr run` and stream its log
#   deploy/local.sh status   which daemons run, which SuperNodes are online, the console URL
#   deploy/local.sh down     stop everything (SIGTERM, then SIGKILL what is left)
#
# State lives in $FESTA_LOCAL_DIR (default /tmp/festa-local); `down` keeps it, `rm -rf` it to
# start over. Ports: SuperLink 19092, body service 19093, console 18080, SuperNodes 19094-19096.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${FESTA_LOCAL_DIR:-/tmp/festa-local}"
PY="${PYTHON:-python3}"
SL_PORT=19092 BODY_PORT=19093 CONSOLE_PORT=18080
SITES=("site-a:classification:19094" "site-b:segmentation:19095" "site-c:detection:19096")

festa() { (cd "$REPO" && "$PY" -m festa.shared.cli "$@"); }

start_bg() {  # name, argv... : own session, pid file, log file
  local name=$1; shift
  # `setsid` makes it a process-group leader, so `down` can stop it with its children
  (cd "$REPO" || exit 1; setsid "$@" >"$DIR/$name.out" 2>&1 </dev/null & echo $! >"$DIR/$name.pid")
}

alive() { [[ -f "$DIR/$1.pid" ]] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

wait_port() {
  "$PY" - "$1" <<'PY'
import socket, sys, time
deadline = time.time() + 60
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit(f"nothing listens on 127.0.0.1:{sys.argv[1]} after 60 s")
        time.sleep(0.3)
PY
}

write_configs() {
  cat >"$DIR/server.toml" <<TOML
[server]
host = "127.0.0.1"
port = $SL_PORT
state-dir = "$DIR/server"
certs = "$DIR/certs"

[body]
host = "127.0.0.1"
port = $BODY_PORT

[console]
host = "127.0.0.1"
port = $CONSOLE_PORT

[run]
app = "$REPO"

[run.config]
rounds = 2
clients = 3
local-steps = 3
tasks = "classification,segmentation,detection"
"model.image-size" = 32
"model.patch-size" = 8
"model.embed-dim" = 32
"model.depth" = 2
"model.num-heads" = 2
"optim.batch-size" = 8
TOML
  for spec in "${SITES[@]}"; do
    IFS=: read -r site task port <<<"$spec"
    cat >"$DIR/$site.toml" <<TOML
[site]
id = "$site"
task = "$task"
data = "phantoms"
state-dir = "$DIR/$site"

[superlink]
address = "127.0.0.1:$SL_PORT"
ca = "$DIR/certs/ca.pem"

[auth]
private-key = "$DIR/certs/nodes/$site.key"

[supernode]
port = $port
TOML
  done
}

up() {
  mkdir -p "$DIR"
  if alive server; then echo "already up ($DIR); deploy/local.sh down first"; exit 1; fi
  [[ -f "$DIR/certs/ca.pem" ]] || festa certs init --dir "$DIR/certs"
  [[ -f "$DIR/certs/superlink.pem" ]] || festa certs server --dir "$DIR/certs"
  for spec in "${SITES[@]}"; do
    site=${spec%%:*}
    [[ -f "$DIR/certs/nodes/$site.key" ]] || festa certs node "$site" --dir "$DIR/certs"
  done
  write_configs
  start_bg server "$PY" -m festa.shared.cli server start --config "$DIR/server.toml"
  wait_port $SL_PORT || { tail -n 30 "$DIR/server.out"; down; exit 1; }
  for spec in "${SITES[@]}"; do
    site=${spec%%:*}
    festa server register-node "$DIR/certs/nodes/$site.pub" --config "$DIR/server.toml"
    start_bg "$site" "$PY" -m festa.shared.cli client start --site "$DIR/$site.toml"
  done
  echo "festa is up on loopback: console http://127.0.0.1:$CONSOLE_PORT ; logs in $DIR/*.out and */logs/"
  echo "next: deploy/local.sh run"
}

run() {
  FLWR_HOME="$DIR/server/flwr" flwr run "$REPO" festa --run-config "$DIR/server/run-config.toml" --stream
}

status() {
  for name in server site-a site-b site-c; do
    if alive "$name"; then echo "$name: running (pid $(cat "$DIR/$name.pid"))"; else echo "$name: stopped"; fi
  done
  if alive server; then
    FLWR_HOME="$DIR/server/flwr" flwr supernode ls festa || true
    echo "console: http://127.0.0.1:$CONSOLE_PORT"
  fi
}

down() {
  for name in site-c site-b site-a server; do  # sites first, then the server
    alive "$name" && kill -TERM -- "-$(cat "$DIR/$name.pid")" 2>/dev/null || true
  done
  for _ in $(seq 1 60); do
    alive server || alive site-a || alive site-b || alive site-c || break
    sleep 0.5
  done
  # whatever did not stop: the daemons and the children they recorded
  for f in "$DIR"/*.pid; do [[ -f $f ]] && kill -KILL -- "-$(cat "$f")" 2>/dev/null || true; rm -f "$f"; done
  while IFS= read -r f; do kill -KILL -- "-$(cat "$f")" 2>/dev/null || true; done < <(find "$DIR" -name '*.pgid' 2>/dev/null)
  echo "festa is down (state kept in $DIR)"
}

case "${1:-}" in
  up) up ;;
  run) run ;;
  status) status ;;
  down) down ;;
  *) echo "usage: $0 up|run|status|down" >&2; exit 2 ;;
esac
