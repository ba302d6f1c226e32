# Shared helpers for scripts/setup and scripts/test (sourced, not executed).

# Debian packages the build and the tests need: apache2 (the server under test), apache2-dev (apxs
# and the httpd/APR headers bindgen reads), libclang-dev (bindgen), libssl-dev (the libssl headers
# of the TLS session handoff; the module links the system libssl, mod_ssl's), redis-server (real
# Redis in tests and in the sandbox), curl, openssl (the per-run CA and certificate of the HTTPS
# tests, and `openssl s_client` as a TLS client).
NCP_APT_PACKAGES=(apache2 apache2-dev libclang-dev libssl-dev redis-server curl openssl)
# Only for the tests: a real browser (headless) opening wss:// (tests/tls_clients.rs), and
# lintian, which tests/package.rs runs (through scripts/package) on the Debian package it builds,
# the PHP CLI that evaluates PHP-coded config files (tests/config.rs, engine/tests/php_config.rs),
# and gdb, whose stack of an Apache child that does not exit at a stop goes into the test's report.
NCP_TEST_APT_PACKAGES=(chromium lintian php-cli gdb)
# Only for scripts/package: dpkg-dev (dpkg-shlibdeps, which cargo-deb runs to compute the
# libraries' dependencies) and lintian (Debian's package checker, run on every package built).
NCP_PACKAGE_APT_PACKAGES=(dpkg-dev lintian)

ncp_log() { printf '==> %s\n' "$*" >&2; }

# Installs the packages that are missing; runs `apt-get update` once, only if something must be
# installed. Idempotent: a second run installs nothing.
ncp_apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$pkg")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    return 0
  fi
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "error: missing packages ${missing[*]} and not root (no sudo): install them first" >&2
      return 1
    fi
  fi
  ncp_log "installing ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
}

# Debian's apache2 package starts (and enables) the system Apache on port 80 when installed; the
# tests never use it, so it is left as the package set it up.

# ---------------------------------------------------------------------------------------------
# Test databases. The suite's database tests use, unless NCP_TEST_MYSQL / NCP_TEST_PGSQL point
# elsewhere (testkit/src/db.rs), exactly these logins, with empty passwords (tests/file_events.rs
# and engine/tests/db_config.rs write them into config.php):
#   MariaDB     root over TCP 127.0.0.1:3306, and root over /run/mysqld/mysqld.sock if it exists
#   PostgreSQL  postgres over TCP 127.0.0.1:5432, and postgres over /run/postgresql if it exists
# ncp_ensure_test_databases checks those logins and, only for what fails, installs
# mariadb-server / postgresql, starts them (systemctl when systemd is PID 1, else
# start-stop-daemon / pg_ctlcluster) and grants the missing login, printing every change.
# Where every login works it changes nothing and prints nothing.
# ---------------------------------------------------------------------------------------------

NCP_MYSQL_SOCKET=/run/mysqld/mysqld.sock
NCP_PGSQL_SOCKET_DIR=/run/postgresql

# Runs a command as root (directly, or through sudo).
ncp_as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "error: '$*' needs root (no sudo)" >&2
    return 1
  fi
}

# ncp_wait_for SECONDS WHAT COMMAND...: polls COMMAND until it succeeds or the deadline passes.
ncp_wait_for() {
  local seconds=$1 what=$2 deadline
  shift 2
  deadline=$(($(date +%s) + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "error: $what not ready within ${seconds} s" >&2
      return 1
    fi
    sleep 0.2
  done
}

ncp_systemd_is_init() { [ -d /run/systemd/system ]; }

ncp_tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# The logins as the tests make them: user root, no password, no option files.
ncp_mysql_tcp_ok() {
  env -u MYSQL_PWD mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P 3306 -u root \
    -e 'SELECT 1' >/dev/null 2>&1
}
# Over the socket the tests send an empty password (sqlx); root's unix_socket login does not
# count, so the check runs as nobody when it can.
ncp_mysql_socket_ok() {
  local as=()
  if [ "$(id -u)" -eq 0 ] && command -v runuser >/dev/null 2>&1; then as=(runuser -u nobody --); fi
  "${as[@]}" env -u MYSQL_PWD mariadb --no-defaults --protocol=SOCKET -S "$NCP_MYSQL_SOCKET" \
    -u root -e 'SELECT 1' >/dev/null 2>&1
}
# Root's own administrative login over the socket (unix_socket on a fresh Debian install).
ncp_mysql_admin() {
  ncp_as_root mariadb --no-defaults --protocol=SOCKET -S "$NCP_MYSQL_SOCKET" -u root "$@"
}
ncp_pgsql_ok() { # HOST (127.0.0.1 or the socket directory)
  PGPASSFILE=/dev/null env -u PGPASSWORD -u PGSERVICE psql -w -X -q -At \
    -d "host=$1 port=5432 user=postgres dbname=postgres" -c 'SELECT 1' >/dev/null 2>&1
}

ncp_mysql_logins_ok() {
  ncp_mysql_tcp_ok || return 1
  [ -S "$NCP_MYSQL_SOCKET" ] || return 0
  ncp_mysql_socket_ok
}

ncp_pgsql_logins_ok() {
  ncp_pgsql_ok 127.0.0.1 || return 1
  [ -S "$NCP_PGSQL_SOCKET_DIR/.s.PGSQL.5432" ] || return 0
  ncp_pgsql_ok "$NCP_PGSQL_SOCKET_DIR"
}

ncp_ensure_mariadb() {
  if [ -n "${NCP_TEST_MYSQL:-}" ]; then
    ncp_log "NCP_TEST_MYSQL is set: using $(printf '%s' "$NCP_TEST_MYSQL" | sed 's#//[^@/]*@#//…@#') as it is"
    return 0
  fi
  if command -v mariadb >/dev/null 2>&1 && ncp_mysql_logins_ok; then
    return 0
  fi
  if ! command -v mariadbd >/dev/null 2>&1 && ! [ -x /usr/sbin/mariadbd ]; then
    if ncp_tcp_open 127.0.0.1 3306; then
      # Some other server owns the port: only the client is needed to check it.
      ncp_apt_install mariadb-client
    else
      ncp_apt_install mariadb-server
    fi
  fi
  if ! ncp_tcp_open 127.0.0.1 3306; then
    if ncp_systemd_is_init; then
      ncp_log "starting MariaDB (systemctl start mariadb)"
      ncp_as_root systemctl start mariadb
    else
      if ! ncp_as_root test -d /var/lib/mysql/mysql; then
        ncp_log "creating the MariaDB system tables in /var/lib/mysql (mariadb-install-db)"
        ncp_as_root mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
      fi
      ncp_as_root install -d -o mysql -g mysql -m 0755 /run/mysqld
      ncp_log "starting MariaDB without systemd (start-stop-daemon … /usr/sbin/mariadbd)"
      ncp_as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd \
        -- --user=mysql
    fi
    ncp_wait_for 60 "MariaDB on 127.0.0.1:3306" ncp_tcp_open 127.0.0.1 3306
    ncp_wait_for 60 "MariaDB on $NCP_MYSQL_SOCKET" test -S "$NCP_MYSQL_SOCKET"
  fi
  if ! ncp_mysql_tcp_ok; then
    ncp_log "MariaDB: creating root@127.0.0.1 with an empty password (the tests' login over TCP)"
    ncp_mysql_admin -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
      GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;"
  fi
  if [ -S "$NCP_MYSQL_SOCKET" ] && ! ncp_mysql_socket_ok; then
    ncp_log "MariaDB: root@localhost also accepts an empty password over the socket (the tests' socket login)"
    ncp_mysql_admin -e "ALTER USER 'root'@'localhost'
      IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;"
  fi
  if ! ncp_mysql_logins_ok; then
    echo "error: MariaDB still refuses root without a password on 127.0.0.1:3306 (or" \
      "$NCP_MYSQL_SOCKET); fix it or set NCP_TEST_MYSQL=mysql://user:password@host:port" >&2
    return 1
  fi
}

ncp_ensure_postgresql() {
  if [ -n "${NCP_TEST_PGSQL:-}" ]; then
    ncp_log "NCP_TEST_PGSQL is set: using $(printf '%s' "$NCP_TEST_PGSQL" | sed 's#//[^@/]*@#//…@#') as it is"
    return 0
  fi
  if command -v psql >/dev/null 2>&1 && ncp_pgsql_logins_ok; then
    return 0
  fi
  if ! command -v pg_lsclusters >/dev/null 2>&1; then
    if ncp_tcp_open 127.0.0.1 5432; then
      ncp_apt_install postgresql-client
    else
      ncp_apt_install postgresql
    fi
  fi
  local ver cluster port
  if command -v pg_lsclusters >/dev/null 2>&1; then
    read -r ver cluster port _ < <(pg_lsclusters -h | awk '$3 == 5432' | head -n 1) || true
    if [ -z "${ver:-}" ] && ! ncp_tcp_open 127.0.0.1 5432; then
      ver=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
      cluster=main
      ncp_log "creating the PostgreSQL cluster $ver/$cluster on port 5432 (pg_createcluster)"
      ncp_as_root pg_createcluster --port 5432 "$ver" "$cluster" >/dev/null
    fi
  fi
  if ! ncp_tcp_open 127.0.0.1 5432; then
    if [ -z "${ver:-}" ]; then
      echo "error: no PostgreSQL cluster on port 5432" >&2
      return 1
    fi
    if ncp_systemd_is_init; then
      ncp_log "starting PostgreSQL $ver/$cluster (systemctl start postgresql@$ver-$cluster)"
      ncp_as_root systemctl start "postgresql@$ver-$cluster"
    else
      ncp_log "starting PostgreSQL $ver/$cluster without systemd (pg_ctlcluster $ver $cluster start)"
      ncp_as_root pg_ctlcluster "$ver" "$cluster" start
    fi
    ncp_wait_for 60 "PostgreSQL on 127.0.0.1:5432" pg_isready -q -h 127.0.0.1 -p 5432
  fi
  if ! ncp_pgsql_logins_ok && [ -n "${ver:-}" ]; then
    local hba=/etc/postgresql/$ver/$cluster/pg_hba.conf lines=() line
    ncp_pgsql_ok 127.0.0.1 || lines+=("host all postgres 127.0.0.1/32 trust")
    if [ -S "$NCP_PGSQL_SOCKET_DIR/.s.PGSQL.5432" ] && ! ncp_pgsql_ok "$NCP_PGSQL_SOCKET_DIR"; then
      lines+=("local all postgres trust")
    fi
    for line in "${lines[@]}"; do
      if ! ncp_as_root grep -qxF "$line" "$hba"; then
        # First match wins: above Debian's "local all postgres peer" and the scram lines.
        ncp_log "PostgreSQL: adding '$line' at the top of $hba (the tests' login)"
        ncp_as_root sed -i "1i # added by mod_nextcloud_push scripts/test:\\n$line" "$hba"
      fi
    done
    ncp_as_root pg_ctlcluster "$ver" "$cluster" reload
    ncp_wait_for 30 "PostgreSQL trust login for postgres" ncp_pgsql_logins_ok || true
  fi
  if ! ncp_pgsql_logins_ok; then
    echo "error: PostgreSQL still refuses postgres without a password on 127.0.0.1:5432 (or" \
      "$NCP_PGSQL_SOCKET_DIR); fix it or set NCP_TEST_PGSQL=postgres://user:password@host:port" >&2
    return 1
  fi
}

# Both servers, as the database tests expect them (see above).
ncp_ensure_test_databases() {
  ncp_ensure_mariadb
  ncp_ensure_postgresql
}
