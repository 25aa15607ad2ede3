# Sourced by the end-to-end scripts: starts the vhost-user-blk back end under test.
#
# start_server SERVER SOCKET IMAGE LOG SECONDS
#   SERVER is "qsd" (qemu-storage-daemon's vhost-user-blk export of IMAGE) or a command line
#   in which @SOCKET@ and @IMAGE@ are replaced. The server runs in the background under
#   `timeout SECONDS`, with its output in LOG; server_pid is set. Returns once SOCKET exists,
#   and fails (status 1, LOG on stderr) if the server exits first or takes over 10 s.
# stop_server
#   Ends the server started last, if it still runs.
server_pid=""

start_server() {
  local server=$1 socket=$2 image=$3 log=$4 seconds=$5 cmd=() i
  if [ "$server" = qsd ]; then
    cmd=(qemu-storage-daemon
      --blockdev "driver=file,node-name=disk,filename=$image,cache.direct=off"
      --export "type=vhost-user-blk,id=export,node-name=disk,addr.type=unix,addr.path=$socket,writable=on")
  else
    read -r -a cmd <<<"${server//@SOCKET@/$socket}"
    for i in "${!cmd[@]}"; do cmd[$i]=${cmd[$i]//@IMAGE@/$image}; done
  fi
  echo "server: ${cmd[*]}"
  rm -f "$socket"
  timeout "$seconds" "${cmd[@]}" >"$log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    [ -S "$socket" ] && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "the server did not create $socket:" >&2
  cat "$log" >&2
  return 1
}

stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
