#!/usr/bin/env bash
# Checks, before any test runs, that every outside program and module the tests, the
# benchmarks and the scripts call is there and can do what they need of it. Each problem
# is one line naming the Debian package that brings it.
#
#   scripts/preflight.sh           check every peer (run by scripts/test.sh)
#   scripts/preflight.sh --audit   also prove scripts/install-deps.sh installs them all:
#                                  each program and module found here must come (dpkg -S)
#                                  from a listed package or one of its dependencies, or
#                                  from an Essential package; and every program the test
#                                  code starts (Command::new / exec.Command) must be in
#                                  the table below.
set -euo pipefail
cd "$(dirname "$0")/.."

# The interpreter the tests start: Debian's, which sees Debian's Python packages.
PYTHON=/usr/bin/python3

# program  package  what the tests need of it (a check below)
PROGRAMS="
swaks        swaks             swaks
smtp-sink    postfix           exists
smtp-source  postfix           exists
postfix      postfix           exists
postconf     postfix           exists
knotd        knot              exists
knotc        knot              exists
kdig         knot-dnsutils     exists
openssl      openssl           exists
curl         curl              exists
ip           iproute2          netns
kill         procps            exists
pgrep        procps            exists
timeout      coreutils         exists
sha256sum    coreutils         exists
nsenter      util-linux        exists
mount        mount             exists
umount       mount             exists
losetup      mount             exists
mkfs.ext4    e2fsprogs         exists
dd           coreutils         exists
truncate     coreutils         exists
sh           dash              exists
bash         bash              exists
sysctl       procps            exists
nft          nftables          exists
gcc          gcc               exists
pkg-config   pkg-config        exists
tar          tar               exists
bc           bc                exists
/usr/bin/python3 python3        python
"
# module (as /usr/bin/python3 imports it)  package
PYTHON_MODULES="
aiosmtpd.smtp   python3-aiosmtpd
aiosmtpd.controller python3-aiosmtpd
dkim            python3-dkim
dns.resolver    python3-dnspython
nacl.signing    python3-nacl
smtplib         libpython3-stdlib
ssl             libpython3-stdlib
matplotlib      python3-matplotlib
"
# Perl modules swaks loads for STARTTLS and AUTH (swaks --support reports on them).
PERL_MODULES="
Net::SSLeay     libnet-ssleay-perl
IO::Socket::SSL libio-socket-ssl-perl
Authen::SASL    libauthen-sasl-perl
"
# Programs the tests start that the project builds or the toolchain brings: not Debian's.
NOT_DEBIAN="go cargo kubectl helm kwok etcd kube-apiserver crictl ctr operator smtp-node promtool prometheus"

problems=()
problem() { problems+=("$*"); }

check_program() {
  local program=$1 package=$2 need=$3
  if ! command -v "$program" >/dev/null 2>&1; then
    problem "$program is missing: install the Debian package $package"
    return
  fi
  case "$need" in
  exists) ;;
  swaks)
    # STARTTLS and implicit TLS need "TLS", AUTH PLAIN/LOGIN "Basic AUTH".
    local support feature
    support=$(swaks --support 2>&1 || true)
    for feature in "TLS" "Basic AUTH"; do
      grep -q "^=== $feature supported" <<<"$support" \
        || problem "swaks cannot do $feature ($(grep -m1 "$feature" <<<"$support")): install libnet-ssleay-perl libio-socket-ssl-perl libauthen-sasl-perl"
    done
    ;;
  netns)
    ip netns list >/dev/null 2>&1 || problem "ip has no netns support: install the Debian package $package"
    ;;
  python)
    [ -x "$PYTHON" ] || problem "$PYTHON is missing: install the Debian package $package"
    ;;
  esac
}

check_python_module() {
  local module=$1 package=$2
  [ -x "$PYTHON" ] || return 0
  "$PYTHON" -c "import $module" 2>/dev/null \
    || problem "$PYTHON cannot import $module: install the Debian package $package"
}

check_perl_module() {
  local module=$1 package=$2
  perl -M"$module" -e 1 2>/dev/null \
    || problem "perl module $module (swaks' TLS/AUTH) is missing: install the Debian package $package"
}

while read -r program package need; do
  [ -n "$program" ] && check_program "$program" "$package" "$need"
done <<<"$PROGRAMS"
while read -r module package; do
  [ -n "$module" ] && check_python_module "$module" "$package"
done <<<"$PYTHON_MODULES"
while read -r module package; do
  [ -n "$module" ] && check_perl_module "$module" "$package"
done <<<"$PERL_MODULES"

if ((${#problems[@]})); then
  printf 'preflight: %s\n' "${problems[@]}" >&2
  echo "preflight: run scripts/install-deps.sh (scripts/test.sh does unless SMTPFLEET_SKIP_INSTALL=1)" >&2
  exit 1
fi

[ "${1:-}" = "--audit" ] || { echo "preflight: every test peer is present"; exit 0; }

# --- audit: the install list covers everything found above ---------------------------

# Installed packages reachable from the install list through Depends/Pre-Depends, plus
# every Essential package (on any Debian system by definition).
declare -A covered=()
while read -r name; do covered[$name]=1; done < <(
  dpkg-query -W -f='${Package}\t${Essential}\t${Depends}, ${Pre-Depends}\n' | awk -F'\t' -v roots="$(scripts/install-deps.sh --list | tr '\n' ' ')" '
    {
      deps = $3
      gsub(/\([^)]*\)/, "", deps); gsub(/[,|]/, " ", deps); gsub(/:[a-z0-9]+/, "", deps)
      depends[$1] = deps
      if ($2 == "yes") { covered[$1] = 1; print $1 }
    }
    END {
      n = split(roots, queue, " ")
      while (n > 0) {
        name = queue[n--]
        if (name in seen) continue
        seen[name] = 1
        if (!(name in covered)) print name
        m = split(depends[name], next_deps, " ")
        for (i = 1; i <= m; i++) if (!(next_deps[i] in seen)) queue[++n] = next_deps[i]
      }
    }')

owner() {
  local path
  for path in "$1" "${1#/usr}" "$(readlink -f "$1")"; do
    dpkg -S "$path" 2>/dev/null | grep -v '^diversion by' | head -n 1 | cut -d: -f1 | grep . && return 0
  done
  return 0
}

audit_file() {
  local what=$1 file=$2 package
  package=$(owner "$file")
  if [ -z "$package" ]; then
    problem "$what ($file) belongs to no Debian package: installed by hand?"
  elif [ -z "${covered[$package]:-}" ]; then
    problem "$what comes from $package, which scripts/install-deps.sh neither lists nor pulls in"
  fi
}

while read -r program package need; do
  [ -n "$program" ] && audit_file "$program" "$(type -P "$program")"
done <<<"$PROGRAMS"
while read -r module package; do
  [ -n "$module" ] && audit_file "python module $module" \
    "$("$PYTHON" -c "import $module; print($module.__file__)")"
done <<<"$PYTHON_MODULES"
while read -r module package; do
  [ -n "$module" ] && audit_file "perl module $module" \
    "$(perl -M"$module" -e "print \$INC{'$(echo "$module" | sed 's#::#/#g').pm'}")"
done <<<"$PERL_MODULES"

# Every program started by test code must be in the table (or be one the project builds).
known=" $(echo "$PROGRAMS" | awk 'NF {print $1}' | tr '\n' ' ') $NOT_DEBIAN "
started=$(grep -rhoE 'Command::new\("[^"]+"\)|exec\.Command(Context)?\((ctx, )?"[^"]+"|run\("[^"]*", "[^"]+"|run\("[^"]+", &\[|must\(t, [a-z"]+, "[^"]+"|start\(t, "[^"]+", "[^"]+"' \
  --include='*.rs' --include='*.go' operator smtp-node e2e monitoring 2>/dev/null \
  | sed -E 's/, &\[$//' | grep -oE '"[^"]*"\)?$' | tr -d '")' | sort -u)
for program in $started; do
  case "$program" in ./*) continue ;; esac # a script of the project
  case "$known" in
  *" $program "*) ;;
  *) problem "test code starts $program, which this preflight does not check: add it to PROGRAMS" ;;
  esac
done

if ((${#problems[@]})); then
  printf 'preflight --audit: %s\n' "${problems[@]}" >&2
  exit 1
fi
echo "preflight --audit: every test peer is present and comes from scripts/install-deps.sh's packages ($(scripts/install-deps.sh --list | wc -l) listed)"
