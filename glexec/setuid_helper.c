/*
 * setuid_helper: glexec's trusted half (DESIGN.md section 6, step 4), installed setuid root. Its
 * caller is hostile; it trusts only the root-owned GLEXEC_CONF, a version-2 ticket signed with the
 * configured Ed25519 key (docs/ticket.md) and its own proof that the caller holds the payload
 * proxy's key. Exit: 201 caller error, 202 system, 203 refused, 126 payload not executable, 204
 * payload exited 201..204, else the payload's status (128+N: signal N). Interface: README.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#ifndef GLEXEC_CONF
#define GLEXEC_CONF "/etc/glexec.conf"
#endif
#ifdef GLEXEC_TEST_HOST /* test builds only: the host name tickets must name */
#define gethostname(h, n) (snprintf((h), (n), "%s", GLEXEC_TEST_HOST) < 0)
#endif
#define DEFAULT_PATH "/usr/local/bin:/usr/bin:/bin"
#define MAX_ID 4294967294ULL /* (uid_t)-1 means "no change" to setresuid */
#define ALNUM "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
#define LOWER "abcdefghijklmnopqrstuvwxyz0123456789"
#define BAD_MODE(m) ((m) & (S_IWGRP | S_IWOTH))
enum { NOEXEC = 126, CALLER = 201, SYS = 202, AUTHZ = 203, PAYLOAD = 204 };
enum { MAX_WIRE = 8192, MAX_TEXT = 4096, MAX_PROXY = 65536, MAX_CONF = 65536, MAX_ENV = 64,
       MAX_SGIDS = 64, MAX_VALIDITY = 300, LIST = 2048 };

/* Never passed to a payload, whatever the config or the caller says. */
static const char *const BAD_PREFIX[] = { "LD_", "MALLOC_", "PYTHON", "PERL", "RUBY", "NODE_",
    "BASH_FUNC_", "GLIBC_", "JAVA_TOOL_", "_JAVA_", "OPENSSL_", NULL };
static const char *const BAD_NAME[] = { "GCONV_PATH", "GETCONF_DIR", "HOSTALIASES", "IFS",
    "LOCALDOMAIN", "LOCPATH", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS",
    "TZDIR", "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", NULL };
/* Set by the helper itself (a caller's value for them is dropped), in build_env's order. */
static const char *const OWN_NAME[] = { "HOME", "USER", "LOGNAME", "X509_USER_PROXY", NULL };
static const char *const TKEYS[13] = { "version", "key_id", "host", "caller_uid", "user", "uid",
    "gid", "sgids", "subject", "not_before", "not_after", "nonce", "proxy_sha256" };
/* Forwarded to the payload by the lingering helper; SIGCHLD (last) ends the wait. */
static const int FORWARD[] = { SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT, SIGCHLD };

static struct { /* the config, with its defaults */
    char white[LIST], preserve[LIST], nonce_dir[PATH_MAX], log_file[PATH_MAX], key_id[17];
    unsigned long long min_uid, min_gid; unsigned char key[32];
    int have_key, log_only, linger, nnp, cleanup, to_file;
} C = { .min_uid = 1000, .min_gid = 1000, .nonce_dir = "/var/lib/glexec/nonces", .linger = 1,
    .nnp = 1, .cleanup = 1, .to_file = -1 };

static struct { /* the ticket's fields: set only once its signature has verified */
    char key_id[17], host[254], user[33], subject[1025], nonce[33], sha[65];
    unsigned long long caller, uid, gid, sg[MAX_SGIDS], nb, na; int nsg;
} T;

static struct { int ticket_fd, proxy_fd, wd_fd, linger, nenv; /* the command line */
    const char *tproxy, *wd_name, *env[MAX_ENV]; char **cmd;
} A = { .ticket_fd = -1, .proxy_fd = -1, .wd_fd = -1, .linger = -1 };

static const char *phase = "usage"; static int status_fd = -1, log_fd = -1, tp_dir = -1, tp_made;
static char tp_name[NAME_MAX + 1], caller[64], home[PATH_MAX] = "/", cmdline[512],
    pem[MAX_PROXY + 1];
static size_t pem_len;
static uid_t ruid; static gid_t rgid; static struct rlimit fsize; /* the caller's, for the payload */

/* Control characters (and for JSON also '"', '\\' and non-ASCII) become '?'. */
static void clean(char *s, int json) {
    for (unsigned char *p = (unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f || (json && (*p > 0x7f || *p == '"' || *p == '\\'))) *p = '?';
}

/* One sanitised line per event: to the log file (O_APPEND, one write) or to syslog. */
__attribute__((format(printf, 1, 2))) static void logmsg(const char *fmt, ...) {
    char msg[2048], line[2200], ts[32] = "?"; time_t now = time(NULL); struct tm tm; va_list ap;
    va_start(ap, fmt), vsnprintf(msg, sizeof msg, fmt, ap), va_end(ap), clean(msg, 0);
    if (log_fd < 0) { syslog(LOG_AUTHPRIV | LOG_NOTICE, "%s", msg); return; }
    if (gmtime_r(&now, &tm)) strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    int n = snprintf(line, sizeof line, "%s glexec-helper[%ld]: %s\n", ts, (long)getpid(), msg);
    if (n >= (int)sizeof line) line[(n = sizeof line - 1) - 1] = '\n';
    if (n > 0 && write(log_fd, line, (size_t)n) != n) syslog(LOG_AUTHPRIV | LOG_ERR, "log: %m: %s", msg);
}

/* The one JSON status record (--status-fd); written at most once. */
static void report(const char *ph, int code, int sig, char *reason) {
    clean(reason, 1);
    if (status_fd >= 0 && dprintf(status_fd, "{\"phase\": \"%s\", \"exit\": %d, \"signal\": %d, "
                                  "\"reason\": \"%s\"}\n", ph, code, sig, reason) < 0)
        logmsg("cannot write the status record: %m");
}

/* Refuse: remove what we made, log one line, tell the caller, exit with `code`. */
__attribute__((noreturn, format(printf, 2, 3))) static void die(int code, const char *fmt, ...) {
    char why[600]; va_list ap;
    va_start(ap, fmt), vsnprintf(why, sizeof why, fmt, ap), va_end(ap), clean(why, 0);
    if (tp_made && unlinkat(tp_dir, tp_name, 0) != 0) logmsg("cannot remove %s: %m", tp_name);
    logmsg("refused: phase=%s exit=%d caller_uid=%u caller=%s target=%s uid=%llu subject=\"%s\" "
           "nonce=%s reason=%s", phase, code, ruid, caller, T.user, T.uid, T.subject, T.nonce, why);
    fprintf(stderr, "glexec-helper: %s\n", why), report(phase, code, 0, why), exit(code);
}

/* Read a descriptor to EOF into buf (cap bytes): 0 ok, 1 too long, -1 error (errno). */
static int read_fd(int fd, char *buf, size_t cap, size_t *len) {
    for (*len = 0;;) {
        ssize_t r = read(fd, buf + *len, cap - *len);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return (int)r;
        if ((*len += (size_t)r) == cap) return 1;
    }
}

static int in_set(char c, const char *set) { return c && strchr(set, c) != NULL; }

static int chars_in(const char *s, size_t n, const char *set) {
    while (n && in_set(s[n - 1], set)) n--;
    return n == 0;
}

static int hexok(const char *s, size_t n) { return chars_in(s, n, "0123456789abcdef"); }

/* Strict decimal (no sign, no leading zero, at most maxdig digits, <= max); s[n] is no digit. */
static int dec(const char *s, size_t n, size_t maxdig, unsigned long long max,
               unsigned long long *out) {
    if (n == 0 || n > maxdig || (n > 1 && s[0] == '0') || !chars_in(s, n, "0123456789")) return -1;
    return (*out = strtoull(s, NULL, 10)) > max ? -1 : 0;
}

/* Standard base64, length a multiple of 4, "=" only as final padding (as scas_server.ticket). */
static int b64(const char *s, size_t n, unsigned char *out, size_t cap, size_t *outlen) {
    size_t pad = n >= 2 ? (size_t)(s[n - 1] == '=') + (s[n - 1] == '=' && s[n - 2] == '=') : 0;
    if (n == 0 || n % 4 || n / 4 * 3 > cap || !chars_in(s, n - pad, ALNUM "+/")) return -1;
    int r = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
    return r < 0 ? -1 : (*outlen = (size_t)r - pad, 0);
}

/* A login name ([A-Za-z0-9_][A-Za-z0-9_.-]{0,31}) or a variable name ([A-Za-z_][A-Za-z0-9_]*). */
static int is_name(const char *s, size_t n, int env) {
    return n > 0 && n <= (env ? 128u : 32u) && in_set(s[0], ALNUM "_") && !(env && s[0] <= '9')
           && chars_in(s + 1, n - 1, env ? ALNUM "_" : ALNUM "_.-");
}

static int listed(const char *const *names, const char *s, size_t n, int prefix) {
    for (size_t l; *names; names++)
        if ((l = strlen(*names)) <= n && (prefix || n == l) && !memcmp(s, *names, l)) return 1;
    return 0;
}

#define FORBIDDEN(s, n) (listed(BAD_PREFIX, (s), (n), 1) || listed(BAD_NAME, (s), (n), 0))

/* Is `name` in a normalised comma list? With pool, ".x" also matches x followed by digits. */
static int inlist(const char *list, const char *name, size_t n, int pool) {
    for (const char *p = list, *e; *p; p = e + 1) {
        size_t l = (e = strchr(p, ',')) ? (size_t)(e - p) : strlen(p), d = l - 1;
        if ((l == n && !memcmp(p, name, n)) || (pool && p[0] == '.' && n > d
            && !memcmp(p + 1, name, d) && chars_in(name + d, n - d, "0123456789"))) return 1;
        if (!e) return 0;
    }
    return 0;
}

static char *trim(char *s) {
    char *e = s + strlen(s);
    while (*s == ' ' || *s == '\t') s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) *--e = 0;
    return s;
}

/* Validate a comma list of user names (".pool" allowed) or variable names; store it unblanked. */
static void set_list(const char *key, char *v, char *dst, int users) {
    size_t o = 0;
    if (!*v || (!users && !strcmp(v, "no"))) return;
    for (char *item = v, *next; item; item = next) {
        if ((next = strchr(item, ','))) *next++ = 0;
        item = trim(item);
        size_t n = strlen(item), dot = users && item[0] == '.';
        if (!is_name(item + dot, n - dot, !users)) die(SYS, "%s: bad entry '%s'", key, item);
        if (!users && FORBIDDEN(item, n)) die(SYS, "%s: %s is never passed on", key, item);
        if (o + n + 2 > LIST) die(SYS, "%s is too long", key);
        o += (size_t)snprintf(dst + o, LIST - o, "%s%s", o ? "," : "", item);
    }
}

static int choice(const char *k, const char *v, const char *one, const char *zero) {
    if (strcmp(v, one) && strcmp(v, zero)) die(SYS, "%s must be %s or %s", k, one, zero);
    return !strcmp(v, one);
}

static unsigned long long number(const char *k, const char *v) {
    unsigned long long x;
    if (dec(v, strlen(v), 10, MAX_ID, &x) || x == 0) die(SYS, "%s must be 1..%llu", k, MAX_ID);
    return x;
}

static void path(const char *k, const char *v, char *dst) {
    if (v[0] != '/' || strlen(v) >= PATH_MAX) die(SYS, "%s must be an absolute path", k);
    strcpy(dst, v);
}

/* scas_ticket_key = ed25519:<key id>:<base64 of the raw 32-byte key>; the id is recomputed. */
static void set_ticket_key(const char *k, const char *v) {
    size_t n = strlen(v), kl; unsigned char raw[48], md[32];
    if (n < 26 || strncmp(v, "ed25519:", 8) || !hexok(v + 8, 16) || v[24] != ':')
        die(SYS, "%s must be ed25519:<16 hex key id>:<base64 key>", k);
    if (b64(v + 25, n - 25, raw, sizeof raw, &kl) || kl != 32 || !SHA256(raw, 32, md))
        die(SYS, "%s: the key is not 32 bytes of base64", k);
    for (int i = 0; i < 8; i++) snprintf(C.key_id + 2 * i, 3, "%02x", md[i]);
    if (memcmp(C.key_id, v + 8, 16)) die(SYS, "%s: key id %.16s is not the key's", k, v + 8);
    memcpy(C.key, raw, 32), C.have_key = 1;
}

static void set_key(const char *k, char *v) {
    if (!strcmp(k, "linger")) C.linger = choice(k, v, "yes", "no");
    else if (!strcmp(k, "no_new_privs")) C.nnp = choice(k, v, "yes", "no");
    else if (!strcmp(k, "target_proxy_cleanup")) C.cleanup = choice(k, v, "yes", "no");
    else if (!strcmp(k, "mode")) C.log_only = choice(k, v, "log-only", "setuid");
    else if (!strcmp(k, "log_destination")) C.to_file = choice(k, v, "file", "syslog");
    else if (!strcmp(k, "user_white_list")) set_list(k, v, C.white, 1);
    else if (!strcmp(k, "preserve_env_variables")) set_list(k, v, C.preserve, 0);
    else if (!strcmp(k, "min_target_uid")) C.min_uid = number(k, v);
    else if (!strcmp(k, "min_target_gid")) C.min_gid = number(k, v);
    else if (!strcmp(k, "nonce_dir") || !strcmp(k, "log_file"))
        path(k, v, k[0] == 'n' ? C.nonce_dir : C.log_file);
    else if (!strcmp(k, "scas_ticket_key")) set_ticket_key(k, v); /* others: the front's (it */
}                                              /* refuses unknown ones); unset keys are safe */

/* The root-owned INI file, checked on the open descriptor; only [glexec] is read, strictly. */
static void read_conf(void) {
    static char buf[MAX_CONF + 1]; size_t n; struct stat st;
    int lineno = 1, any = 0, in = 0, found = 0;
    int fd = open(GLEXEC_CONF, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
    if (fd < 0 || fstat(fd, &st) != 0) die(SYS, "%s: %m", GLEXEC_CONF);
    if (!S_ISREG(st.st_mode) || st.st_uid != 0 || BAD_MODE(st.st_mode))
        die(SYS, "%s must be a regular file owned by root, not group- or world-writable (owner "
            "uid %u, mode %04o)", GLEXEC_CONF, st.st_uid, st.st_mode & 07777);
    if (read_fd(fd, buf, sizeof buf, &n) != 0 || close(fd) != 0 || memchr(buf, 0, n))
        die(SYS, "%s: unreadable, binary or too large", GLEXEC_CONF);
    buf[n] = 0;
    for (char *line = buf, *next, *eq, *k, *s; line; line = next, lineno++) {
        if ((next = strchr(line, '\n'))) *next++ = 0;
        if (!*(s = trim(line)) || *s == '#' || *s == ';') continue;
        if (*s == '[') {
            if (s[strlen(s) - 1] != ']') die(SYS, "line %d: bad section header", lineno);
            s[strlen(s) - 1] = 0, any = 1, found |= in = !strcmp(trim(s + 1), "glexec");
            continue;
        }
        if (!any) die(SYS, "line %d: key outside any section", lineno);
        if (!in) continue;
        if (!(eq = strchr(s, '='))) die(SYS, "line %d: expected key = value", lineno);
        *eq = 0, k = trim(s), set_key(k, trim(eq + 1));
    }
    if (!found) die(SYS, "%s has no [glexec] section", GLEXEC_CONF);
    if (!C.have_key) die(SYS, "scas_ticket_key is missing");
    if (C.to_file == 1 && !C.log_file[0]) die(SYS, "log_destination = file needs log_file");
}

static int fdarg(const char *opt, const char *v) {
    unsigned long long x;
    if (!v || dec(v, strlen(v), 5, 65535, &x) || x < 3 || (int)x == A.ticket_fd
        || (int)x == A.proxy_fd || (int)x == status_fd || (int)x == A.wd_fd)
        die(CALLER, "%s needs a number >= 3 that no other option names", opt);
    return (int)x;
}

static void add_env(const char *v) {
    int n = (int)strcspn(v, "=");
    phase = "environment";
    if (!v[n] || !is_name(v, (size_t)n, 1)) die(CALLER, "--env needs NAME=VALUE: '%.64s'", v);
    if (FORBIDDEN(v, (size_t)n)) die(CALLER, "%.*s is never passed to a payload", n, v);
    if (A.nenv == MAX_ENV) die(CALLER, "too many --env options");
    A.env[A.nenv++] = v, phase = "usage";
}

static void parse_args(int argc, char **argv) {
    int i;
    for (i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--") && ++i) break; /* the command follows */
        if (!strcmp(o, "--linger") && A.linger < 0) A.linger = 1, i--; /* no value */
        else if (!strcmp(o, "--exec") && A.linger < 0) A.linger = 0, i--;
        else if (!strcmp(o, "--ticket-fd") && A.ticket_fd < 0) A.ticket_fd = fdarg(o, v);
        else if (!strcmp(o, "--proxy-fd") && A.proxy_fd < 0) A.proxy_fd = fdarg(o, v);
        else if (!strcmp(o, "--status-fd") && status_fd < 0) status_fd = fdarg(o, v);
        else if (!strcmp(o, "--workdir-fd") && A.wd_fd < 0) A.wd_fd = fdarg(o, v);
        else if (!strcmp(o, "--workdir-name") && !A.wd_name && v && is_name(v, strlen(v), 0))
            A.wd_name = v; /* a login name's characters: no '/', never "." or ".." */
        else if (!strcmp(o, "--target-proxy") && !A.tproxy && v && v[0] == '/') A.tproxy = v;
        else if (!strcmp(o, "--env") && v) add_env(v);
        else die(CALLER, "bad option '%.64s'; usage: --ticket-fd N --proxy-fd M [OPTION]... -- /CMD"
                 " [ARG]... (README: the helper's interface)", o);
        i++; /* the option's value */
    }
    if (A.ticket_fd < 0 || A.proxy_fd < 0) die(CALLER, "no ticket: need --ticket-fd, --proxy-fd");
    if ((A.wd_fd < 0) != !A.wd_name) die(CALLER, "--workdir-fd and --workdir-name go together");
    if (i >= argc || argv[i][0] != '/') die(CALLER, "command not found: give an absolute path");
    if (A.tproxy && strlen(A.tproxy) >= PATH_MAX) die(CALLER, "--target-proxy: path too long");
    A.cmd = argv + i;
    for (int k = i, o = 0; k < argc && o < (int)sizeof cmdline - 1; k++)
        o += snprintf(cmdline + o, sizeof cmdline - (size_t)o, k > i ? " %s" : "%s", argv[k]);
}

/* Close every descriptor but 0-2 and the named ones; those become close-on-exec. */
static void close_fds(void) {
    int keep[4] = { A.ticket_fd, A.proxy_fd, status_fd, A.wd_fd }, hi = keep[0];
    for (int a = 1; a < 4; a++) hi = keep[a] > hi ? keep[a] : hi;
    for (int fd = 3; fd < hi; fd++)
        if (fd != keep[0] && fd != keep[1] && fd != keep[2] && fd != keep[3] && close(fd) != 0
            && errno != EBADF) die(SYS, "close: %m");
    if (close_range((unsigned)hi + 1, ~0u, 0) != 0) die(SYS, "close_range: %m");
    if (status_fd >= 0 && fcntl(status_fd, F_SETFD, FD_CLOEXEC) != 0) /* the others are read */
        status_fd = -1, die(CALLER, "--status-fd: descriptor not open");
    if (fcntl(A.ticket_fd, F_GETFD) == -1 || fcntl(A.proxy_fd, F_GETFD) == -1) /* else a file we */
        die(CALLER, "--ticket-fd / --proxy-fd: descriptor not open"); /* open lands on it */
}

/* Helper: all signals default, SIGPIPE/SIGXFSZ ignored (errors, not death). Payload: defaults. */
static void set_signals(int payload) {
    sigset_t none;
    for (int s = 1; !payload && s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP && signal(s, SIG_DFL) == SIG_ERR && errno != EINVAL)
            die(SYS, "signal %d: %m", s);
    if (signal(SIGPIPE, payload ? SIG_DFL : SIG_IGN) == SIG_ERR || sigemptyset(&none) != 0
        || signal(SIGXFSZ, payload ? SIG_DFL : SIG_IGN) == SIG_ERR
        || sigprocmask(SIG_SETMASK, &none, NULL) != 0) die(SYS, "cannot reset signals: %m");
}

/* In setuid mode: really setuid root, from a root-owned file. Then the log file, if any. */
static void check_install(void) {
    struct stat st; int fd = C.log_only ? -1 : open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (!C.log_only && geteuid() != 0)
        die(SYS, "not installed setuid root (euid %u): needs root:root 4755, no nosuid", geteuid());
    if (!C.log_only && (fd < 0 || fstat(fd, &st) != 0 || close(fd) != 0 || st.st_uid != 0
                        || !(st.st_mode & S_ISUID) || BAD_MODE(st.st_mode)))
        die(SYS, "the helper binary must be root's, setuid, not group- or world-writable");
    if (!C.log_file[0] || !C.to_file) return;
    fd = open(C.log_file, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 || fstat(fd, &st) != 0) die(SYS, "log_file %s: %m", C.log_file);
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || BAD_MODE(st.st_mode) || st.st_nlink != 1)
        die(SYS, "log_file %s: not our own regular file, or group/world-writable", C.log_file);
    log_fd = fd;
}

/* docs/ticket.md "Verification" steps 1-5, in that order; the text parsed strictly. */
static void verify_ticket(void) {
    static char w[MAX_WIRE + 2]; static unsigned char text[MAX_WIRE], sig[80];
    const char *v[13], *p, *end, *c, *dot, *t = (const char *)text;
    size_t n, tl, sl, vl[13]; char host[256] = "";
    int r = read_fd(A.ticket_fd, w, sizeof w, &n);
    if (r < 0 || close(A.ticket_fd) != 0) die(CALLER, "cannot read the ticket descriptor: %m");
    if (n && w[n - 1] == '\n') n--;
    if (n == 0) die(AUTHZ, "no ticket on descriptor %d", A.ticket_fd);
    if (r > 0 || n > MAX_WIRE) die(AUTHZ, "ticket longer than %d characters", MAX_WIRE);
    if (!(dot = memchr(w, '.', n)) || memchr(dot + 1, '.', n - (size_t)(dot + 1 - w))
        || b64(w, (size_t)(dot - w), text, sizeof text, &tl)
        || b64(dot + 1, n - (size_t)(dot + 1 - w), sig, sizeof sig, &sl))
        die(AUTHZ, "ticket must be <base64 text>.<base64 signature>, canonical base64");
    if (sl != 64 || tl > MAX_TEXT) die(AUTHZ, "bad signature or text length");
    EVP_PKEY *pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, C.key, 32);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!pk || !ctx || EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pk) != 1)
        die(SYS, "libcrypto cannot set up Ed25519 verification");
    r = EVP_DigestVerify(ctx, sig, 64, text, tl), EVP_MD_CTX_free(ctx), EVP_PKEY_free(pk);
    if (r != 1) die(AUTHZ, "ticket signature does not verify");
    /* signed by SCAS, and still parsed as strictly as scas_server.ticket.parse_text */
    if (tl == 0 || t[tl - 1] != '\n' || memchr(t, '\r', tl) || memchr(t, 0, tl))
        die(AUTHZ, "ticket text must be LF-terminated lines without CR or NUL");
    if (tl < 10 || memcmp(t, "version=2\n", 10)) /* version 1 does not bind the payload proxy */
        die(AUTHZ, "unsupported ticket version: only version 2 is accepted");
    p = t, end = t + tl;
    for (int i = 0, kl; i < 13; i++, p = c + 1) {
        kl = (int)strlen(TKEYS[i]);
        if (!(c = p < end ? memchr(p, '\n', (size_t)(end - p)) : NULL) || c - p <= kl
            || memcmp(p, TKEYS[i], (size_t)kl) || p[kl] != '=')
            die(AUTHZ, "ticket text must hold the 13 keys of version 2 in order");
        vl[i] = (size_t)(c - (v[i] = p + kl + 1));
    }
    if (p != end) die(AUTHZ, "ticket text must have exactly 13 lines");
    if (vl[1] != 16 || !hexok(v[1], 16) || vl[11] != 32 || !hexok(v[11], 32) || vl[12] != 64
        || !hexok(v[12], 64) || vl[2] < 1 || vl[2] > 253 || !in_set(v[2][0], LOWER)
        || !in_set(v[2][vl[2] - 1], LOWER) || !chars_in(v[2], vl[2], LOWER ".-")
        || !is_name(v[4], vl[4], 0))
        die(AUTHZ, "malformed key_id, host, user, nonce or proxy_sha256 in the ticket");
    if (dec(v[3], vl[3], 10, MAX_ID, &T.caller) || dec(v[5], vl[5], 10, MAX_ID, &T.uid)
        || dec(v[6], vl[6], 10, MAX_ID, &T.gid) || dec(v[9], vl[9], 12, ~0ULL, &T.nb)
        || dec(v[10], vl[10], 12, ~0ULL, &T.na))
        die(AUTHZ, "a number in the ticket is malformed or out of range");
    for (const char *s = v[7], *e = v[7] + vl[7]; vl[7] && s <= e; s = c + 1, T.nsg++) {
        if (!(c = memchr(s, ',', (size_t)(e - s)))) c = e;
        if (T.nsg == MAX_SGIDS || dec(s, (size_t)(c - s), 10, MAX_ID, &T.sg[T.nsg]))
            die(AUTHZ, "sgids must be 1-64 comma-separated decimals");
    }
    if (vl[8] < 1 || vl[8] > 1024 || v[8][0] != '/') die(AUTHZ, "subject must be a /DN");
    for (size_t i = 0; i < vl[8]; i++)
        if ((unsigned char)v[8][i] < 0x20 || v[8][i] == 0x7f) die(AUTHZ, "control char in subject");
    if (T.nb >= T.na || T.na - T.nb > MAX_VALIDITY) die(AUTHZ, "validity window empty or > 300 s");
    memcpy(T.key_id, v[1], 16), memcpy(T.host, v[2], vl[2]), memcpy(T.user, v[4], vl[4]);
    memcpy(T.subject, v[8], vl[8]), memcpy(T.nonce, v[11], 32), memcpy(T.sha, v[12], 64);
    if (strcmp(T.key_id, C.key_id)) die(AUTHZ, "ticket is for key %s, not %s", T.key_id, C.key_id);
    if (gethostname(host, sizeof host - 1) != 0) die(SYS, "gethostname: %m");
    for (char *h = host; *h; h++) *h = (char)(*h >= 'A' && *h <= 'Z' ? *h - 'A' + 'a' : *h);
    if (strcmp(T.host, host)) die(AUTHZ, "ticket is for host %s, this is %s", T.host, host);
    if (T.caller != ruid) die(AUTHZ, "ticket is for caller uid %llu, not %u", T.caller, ruid);
    time_t now = time(NULL);
    if (now < 0 || (unsigned long long)now < T.nb) die(AUTHZ, "ticket is not valid yet");
    if ((unsigned long long)now >= T.na) die(AUTHZ, "ticket has expired");
}

/* X509_check_private_key compares public parts only: the key must sign what the leaf verifies. */
static int signs_for(X509 *leaf, EVP_PKEY *key) {
    static const unsigned char msg[] = "glexec-helper proof of possession";
    static unsigned char sig[2048]; size_t sl = sizeof sig;
    EVP_MD_CTX *s = EVP_MD_CTX_new(), *v = EVP_MD_CTX_new(); EVP_PKEY *pub = X509_get0_pubkey(leaf);
    int ok = s && v && pub && EVP_DigestSignInit(s, NULL, NULL, NULL, key) == 1
             && EVP_DigestSign(s, sig, &sl, msg, sizeof msg) == 1
             && EVP_DigestVerifyInit(v, NULL, NULL, NULL, pub) == 1
             && EVP_DigestVerify(v, sig, sl, msg, sizeof msg) == 1;
    return EVP_MD_CTX_free(s), EVP_MD_CTX_free(v), ok;
}

/* Proof of possession: the proxy's key matches its leaf, and that leaf is the ticket's. */
static void check_proxy(void) {
    unsigned char md[32], *der = NULL; char hex[65];
    int r = read_fd(A.proxy_fd, pem, sizeof pem - 1, &pem_len);
    if (r < 0 || close(A.proxy_fd) != 0) die(CALLER, "cannot read the proxy descriptor: %m");
    if (r > 0) die(CALLER, "proxy of %d bytes or more", MAX_PROXY);
    BIO *b = BIO_new_mem_buf(pem, (int)pem_len);
    X509 *leaf = b ? PEM_read_bio_X509(b, NULL, NULL, "") : NULL; /* the first certificate */
    if (!leaf || BIO_reset(b) != 1) die(CALLER, "the proxy holds no readable certificate");
    EVP_PKEY *key = PEM_read_bio_PrivateKey(b, NULL, NULL, ""); /* the first key; "": no prompt */
    BIO_free(b);
    if (!key) die(AUTHZ, "no proof of possession: no readable unencrypted private key");
    if (X509_check_private_key(leaf, key) != 1 || !signs_for(leaf, key))
        die(AUTHZ, "no proof of possession: the private key is not the leaf certificate's");
    int len = i2d_X509(leaf, &der);
    if (len <= 0 || !SHA256(der, (size_t)len, md)) die(SYS, "cannot hash the leaf certificate");
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
    OPENSSL_free(der), X509_free(leaf), EVP_PKEY_free(key);
    if (CRYPTO_memcmp(hex, T.sha, 64))
        die(AUTHZ, "the ticket was issued for another proxy (proxy_sha256 differs)");
}

static void check_target(void) {
    if (T.uid < C.min_uid || T.gid < C.min_gid) /* the minimums are >= 1: never root */
        die(AUTHZ, "target uid %llu / gid %llu below min_target_uid %llu / min_target_gid %llu",
            T.uid, T.gid, C.min_uid, C.min_gid);
    for (int i = 0; i < T.nsg; i++)
        if (T.sg[i] < C.min_gid) die(AUTHZ, "secondary gid %llu below the minimum", T.sg[i]);
    struct passwd *pw = getpwnam(T.user);
    if (!pw) die(AUTHZ, "target user %s has no passwd entry", T.user);
    if (pw->pw_uid != T.uid)
        die(AUTHZ, "passwd uid of %s is %u, the ticket says %llu", T.user, pw->pw_uid, T.uid);
    if (!C.log_only) snprintf(home, sizeof home, "%s", pw->pw_dir);
}

/* A ticket works once: create <nonce_dir>/<nonce> with O_EXCL in a root-only directory. */
static void burn_nonce(void) {
    if (C.log_only && geteuid() != 0) { logmsg("log-only without root: nonce not burnt"); return; }
    struct stat st; int d = open(C.nonce_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (d < 0 || fstat(d, &st) != 0) die(SYS, "nonce_dir %s: %m", C.nonce_dir);
    if (st.st_uid != 0 || (st.st_mode & 077)) die(SYS, "nonce_dir %s: need root 0700", C.nonce_dir);
    int f = openat(d, T.nonce, O_CREAT | O_EXCL | O_NOFOLLOW | O_WRONLY | O_CLOEXEC, 0600);
    if (f < 0 && errno == EEXIST) die(AUTHZ, "ticket replayed: nonce %s already used", T.nonce);
    if (f < 0 || close(f) != 0 || close(d) != 0) die(SYS, "cannot burn the nonce: %m");
}

/* setgroups -> setresgid -> setresuid, then prove that root cannot come back. */
static void drop(uid_t r, uid_t u, gid_t g, int groups) {
    uid_t a, b, c; gid_t x, y, z, sg[MAX_SGIDS];
    for (int i = 0; i < T.nsg; i++) sg[i] = (gid_t)T.sg[i];
    if (groups && setgroups((size_t)T.nsg, sg) != 0) die(SYS, "setgroups: %m");
    if (setresgid(g, g, g) != 0 || setresuid(r, u, u) != 0)
        die(SYS, "cannot switch to uid %u gid %u: %m", u, g);
    if (getresuid(&a, &b, &c) != 0 || getresgid(&x, &y, &z) != 0 || a != r || b != u || c != u
        || x != g || y != g || z != g || (groups && getgroups(0, NULL) != T.nsg))
        die(SYS, "the identity switch did not take");
    if (u != 0 && r != 0 && (setuid(0) == 0 || seteuid(0) == 0 || setgid(0) == 0))
        die(SYS, "root privileges could be regained");
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) die(SYS, "PR_SET_DUMPABLE: %m"); /* creds reset it */
}

/* Work-directory hand-over, by descriptor only: a new directory in the caller's own one, owned
 * by the target with the caller's group (setgid, 2770); the payload starts in it. */
static void make_workdir(uid_t u) {
    struct stat st; int d;
    if (A.wd_fd < 0) return;
    if (fstat(A.wd_fd, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ruid)
        die(CALLER, "--workdir-fd: not a directory owned by the caller");
    if (mkdirat(A.wd_fd, A.wd_name, 0700) != 0) die(CALLER, "cannot create workdir %s: %m", A.wd_name);
    if ((d = openat(A.wd_fd, A.wd_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0
        || fstat(d, &st) != 0 || st.st_uid != geteuid()) /* (btrfs counts no dir links) */
        die(CALLER, "work directory %s was swapped before the hand-over", A.wd_name);
    if (fchown(d, u, rgid) != 0 || fchmod(d, 02770) != 0 || fchdir(d) != 0 || close(d) != 0
        || close(A.wd_fd) != 0) die(SYS, "cannot hand over work directory %s: %m", A.wd_name);
}

/* Write the verified proxy as the (already switched) target user; refuse anything odd. */
static void write_proxy(uid_t u) {
    char dir[PATH_MAX]; struct stat st;
    if (!A.tproxy) return;
    const char *slash = strrchr(A.tproxy, '/'), *name = slash + 1;
    size_t dl = slash == A.tproxy ? 1 : (size_t)(slash - A.tproxy);
    memcpy(dir, A.tproxy, dl), dir[dl] = 0;
    int d = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (d < 0 || fstat(d, &st) != 0) die(CALLER, "target proxy directory %s: %m", dir);
    if (!((st.st_uid == u && !BAD_MODE(st.st_mode))
          || ((st.st_mode & S_ISVTX) && (st.st_uid == 0 || st.st_uid == u))))
        die(CALLER, "%s is neither the target's own directory (not group/world-writable) nor a "
            "sticky one of root or the target", dir);
    if (fstatat(d, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
        die(CALLER, "%s %s (owner uid %u); refusing to overwrite it", A.tproxy,
            S_ISLNK(st.st_mode) ? "is a symbolic link" : "exists", st.st_uid);
    int f = openat(d, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (f < 0) die(CALLER, "cannot create %s: %m", A.tproxy);
    tp_dir = d, tp_made = 1, snprintf(tp_name, sizeof tp_name, "%s", name);
    if (write(f, pem, pem_len) != (ssize_t)pem_len || fchmod(f, 0600) != 0 || fsync(f) != 0
        || close(f) != 0) /* a short write to a regular file is an error (ENOSPC, EFBIG) */
        die(SYS, "cannot write %s: %m", A.tproxy);
}

/* From scratch: PATH, the caller's allowed --env values, HOME/USER/LOGNAME, X509_USER_PROXY. */
static char **build_env(const char *user) {
    static char *envp[MAX_ENV + 8], path[] = "PATH=" DEFAULT_PATH, own[4][PATH_MAX + 24];
    const char *val[4] = { home, user, user, A.tproxy }; /* OWN_NAME's values */
    int n = 1; envp[0] = path;
    for (int i = 0; i < A.nenv; i++) {
        size_t l = strcspn(A.env[i], "=");
        if (l == 4 && !memcmp(A.env[i], "PATH", 4)) envp[0] = (char *)A.env[i];
        else if (!listed(OWN_NAME, A.env[i], l, 0)) envp[n++] = (char *)A.env[i];
    }
    for (int i = 0; i < 4 && val[i]; i++)
        snprintf(own[i], sizeof own[i], "%s=%s", OWN_NAME[i], val[i]), envp[n++] = own[i];
    return envp[n] = NULL, envp;
}

/* Exec the payload with defaults for all signals; on failure 201 (not found) or 126, and why. */
static int exec_payload(char **envp, char *why, size_t n) {
    set_signals(1);
    if (setrlimit(RLIMIT_FSIZE, &fsize) != 0) return snprintf(why, n, "setrlimit: %m"), SYS;
    if (A.wd_name) umask(007); /* what the payload leaves in the work directory, the pilot reads */
    execve(A.cmd[0], A.cmd, envp);
    int code = errno == ENOENT || errno == ENOTDIR ? CALLER : NOEXEC;
    return snprintf(why, n, "cannot execute %s: %m", A.cmd[0]), code;
}

static void run(void) {
    int linger = A.linger >= 0 ? A.linger : C.linger, st = 0, sig = 0, ep[2], s;
    uid_t u = C.log_only ? ruid : (uid_t)T.uid, a, b, c; gid_t g = C.log_only ? rgid : (gid_t)T.gid;
    const char *user = C.log_only ? caller : T.user; char sgl[64 * 11 + 1] = "-", why[64];
    struct { int code; char why[240]; } m = { SYS, "" };
    sigset_t fwd; siginfo_t si; struct rusage ru; pid_t pid, got = 0, self = getpid();
    for (int i = 0, o = 0; i < T.nsg; i++)
        o += snprintf(sgl + o, sizeof sgl - (size_t)o, i ? ",%llu" : "%llu", T.sg[i]);
    logmsg("%s: caller_uid=%u caller=%s target=%s uid=%llu gid=%llu sgids=%s subject=\"%s\" "
           "nonce=%s cmd=%s", C.log_only ? "log-only, no identity switch: would map" : "permit",
           ruid, caller, T.user, T.uid, T.gid, sgl, T.subject, T.nonce, cmdline);
    phase = "workdir", make_workdir(u);
    /* Lingering parent: real uid the caller (who may signal it), effective/saved the target. */
    phase = "switch", drop(linger && ruid != 0 ? ruid : u, u, g, !C.log_only);
    if (C.nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die(SYS, "no_new_privs: %m");
    if (faccessat(AT_FDCWD, ".", X_OK, AT_EACCESS) != 0)
        die(CALLER, "the working directory is not reachable by %s: %m", user);
    if (sigemptyset(&fwd) != 0) die(SYS, "sigemptyset: %m");
    for (size_t i = 0; i < sizeof FORWARD / sizeof *FORWARD; i++)
        if (sigaddset(&fwd, FORWARD[i]) != 0) die(SYS, "sigaddset: %m");
    if (sigprocmask(SIG_BLOCK, &fwd, NULL) != 0) die(SYS, "cannot block signals: %m");
    phase = "target-proxy", write_proxy(u);
    OPENSSL_cleanse(pem, sizeof pem);
    char **envp = build_env(user);
    phase = "exec";
    if (!linger) m.code = exec_payload(envp, m.why, sizeof m.why), die(m.code, "%s", m.why);
    if (pipe2(ep, O_CLOEXEC) != 0 || (pid = fork()) < 0) die(SYS, "cannot fork the payload: %m");
    if (pid == 0) { /* the payload: all three uids the target's, then exec */
        tp_made = 0, status_fd = -1;
        if (close(ep[0]) != 0 || setresuid(u, u, u) != 0 || getresuid(&a, &b, &c) != 0
            || a != u || b != u || c != u || (u != 0 && setuid(0) == 0) /* a killed helper */
            || prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != self) /* takes the payload */
            snprintf(m.why, sizeof m.why, "cannot drop the payload to uid %u", u);
        else m.code = exec_payload(envp, m.why, sizeof m.why);
        _exit(write(ep[1], &m, sizeof m) == (ssize_t)sizeof m ? m.code : SYS);
    }
    if (close(ep[1]) != 0) die(SYS, "close: %m");
    while (got == 0) { /* forward signals until the payload is reaped */
        if ((s = sigwaitinfo(&fwd, &si)) < 0 && errno == EINTR) continue;
        if (s < 0) die(SYS, "sigwaitinfo: %m");
        if (s != SIGCHLD && kill(pid, s) != 0 && errno != ESRCH) logmsg("cannot forward signal %d: %m", s);
        if (s == SIGCHLD && (got = waitpid(pid, &st, WNOHANG)) < 0) die(SYS, "waitpid: %m");
    }
    ssize_t k = read(ep[0], &m, sizeof m);
    if (k != 0 && k != (ssize_t)sizeof m) die(SYS, "lost the payload's start report");
    if (k > 0) m.why[sizeof m.why - 1] = 0, die(m.code, "%s", m.why);
    if (getrusage(RUSAGE_CHILDREN, &ru) != 0) memset(&ru, 0, sizeof ru);
    int raw = WIFSIGNALED(st) ? 128 + (sig = WTERMSIG(st)) : WEXITSTATUS(st);
    int code = !sig && raw >= 201 && raw <= 204 ? PAYLOAD : raw;
    if (C.cleanup && tp_made && unlinkat(tp_dir, tp_name, 0) != 0) logmsg("cannot remove %s: %m", A.tproxy);
    logmsg("payload done: pid=%d target=%s uid=%u exit=%d signal=%d helper_exit=%d utime=%ld.%06ld"
           " stime=%ld.%06ld maxrss=%ldKiB nonce=%s", (int)pid, user, u, sig ? -1 : raw, sig, code,
           (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec, (long)ru.ru_stime.tv_sec,
           (long)ru.ru_stime.tv_usec, ru.ru_maxrss, T.nonce);
    snprintf(why, sizeof why, "payload %s %d", sig ? "killed by signal" : "exited", sig ? sig : raw);
    report("payload", raw, sig, why), exit(code);
}

int main(int argc, char **argv) {
    umask(077);
    for (int fd = 0; fd < 3; fd++) /* 0-2 must be open, or our files could land on them */
        if (fcntl(fd, F_GETFD) == -1 && open("/dev/null", O_RDWR) != fd) _exit(SYS);
    for (char **e = environ; e && *e; e++) /* libcrypto's constructor has read OPENSSL_ia32cap */
        if (!strncmp(*e, "OPENSSL_", 8)) _exit(CALLER);
    if (clearenv() != 0) _exit(SYS);
    struct rlimit big = { RLIM_INFINITY, RLIM_INFINITY }; /* the caller's limit must not cut the log */
    if (getrlimit(RLIMIT_FSIZE, &fsize) != 0) _exit(SYS);
    if (setrlimit(RLIMIT_FSIZE, &big) != 0 /* without CAP_SYS_RESOURCE: up to the hard limit */
        && setrlimit(RLIMIT_FSIZE, &(struct rlimit){ fsize.rlim_max, fsize.rlim_max }) != 0) _exit(SYS);
    openlog("glexec-helper", LOG_PID, LOG_AUTHPRIV), ruid = getuid(), rgid = getgid();
    parse_args(argc, argv);
    phase = "setup", close_fds(), set_signals(0);
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0
        || !OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL)) die(SYS, "cannot initialise");
    struct passwd *pw = getpwuid(ruid);
    snprintf(caller, sizeof caller, "%s", pw ? pw->pw_name : "");
    if (pw) snprintf(home, sizeof home, "%s", pw->pw_dir);
    phase = "config", read_conf();
    phase = "install", check_install();
    phase = "environment";
    for (int i = 0, n; i < A.nenv; i++)
        if (!inlist(C.preserve, A.env[i], (size_t)(n = (int)strcspn(A.env[i], "=")), 0))
            die(CALLER, "%.*s is not in preserve_env_variables", n, A.env[i]);
    phase = "whitelist";
    if (!caller[0] || !inlist(C.white, caller, strlen(caller), 1))
        die(AUTHZ, "caller %s (uid %u) is not in user_white_list", caller, ruid);
    phase = "ticket", verify_ticket(), phase = "proxy", check_proxy();
    phase = "target", check_target(), phase = "nonce", burn_nonce();
    run();
}
