# Shared by the scripts in this folder; source it, don't run it.

# ensure_commands installs, with apt, the Debian package of every
# "command:package" pair whose command is missing.
ensure_commands() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  echo "installing ${need[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}
