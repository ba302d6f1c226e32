/* bindgen input: the httpd and APR headers mod_nextcloud_push uses (see build.rs for the
 * allowlist). Nothing is compiled from this file. */
#include <httpd.h>
#include <http_config.h>
#include <http_core.h>
#include <http_log.h>
#include <http_main.h>
#include <http_protocol.h>
#include <http_request.h>
#include <http_ssl.h>
#include <ap_listen.h>
#include <ap_mpm.h>
#include <mpm_common.h>
#include <unixd.h>
#include <util_filter.h>
#include <util_time.h>
#include <apr_buckets.h>
#include <apr_portable.h>
#include <apr_strings.h>
#include <apr_tables.h>
#include <apr_thread_proc.h>
#include <apr_optional_hooks.h>
/* The system libssl, the copy mod_ssl uses (linked dynamically, see build.rs). */
#include <openssl/ssl.h>
