/*
 * cluster/tls.c -- the cluster's nng TLS configurations (contract:
 * cluster/tls.h).
 *
 * Design notes.
 *  - The PEM files are read here, once, and handed to nng as strings
 *    (nng_tls_config_own_cert, nng_tls_config_ca_chain): nng's file
 *    variant wants certificate and key in one file, and says only
 *    NNG_ECRYPTO when something is wrong with them. Before nng sees
 *    them, mbedtls (the engine nng uses) parses each file and verifies
 *    our own certificate against the CA, so that a bad file is an error
 *    at start that names it, not a cluster whose links silently fail
 *    their TLS handshakes.
 *  - Our own certificate must verify against ca_file: every peer checks
 *    it against the same CA, so a node whose files disagree could never
 *    join. With server_name set it must carry that name too, since a
 *    dialing peer checks it.
 *  - The key buffer is wiped before it is freed; nng and mbedtls keep
 *    their own parsed copies.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>
#include <nng/nng.h> /* before tls.h, which needs NNG_DECL */
#include <nng/supplemental/tls/tls.h>

#include "cluster/tls.h"
#include "core/alloc.h"

#define PEM_MAX (1u << 20) /* a certificate chain is a few KiB; refuse anything huge */

struct tr__cluster_tls {
	nng_tls_config *server; /* for listeners */
	nng_tls_config *client; /* for dialers */
};

/* A PEM file, NUL-terminated (mbedtls counts the NUL in a PEM's length).
 * `what` names the option in the message. */
static int read_pem(const char *what, const char *path, char **out, size_t *len, char *err,
                    size_t errlen)
{
	struct stat sb;
	char *buf = NULL;
	size_t got = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	*out = NULL;
	if (fd < 0 || fstat(fd, &sb) != 0)
		goto sys_fail;
	if (!S_ISREG(sb.st_mode) || sb.st_size <= 0 || (uint64_t)sb.st_size > PEM_MAX) {
		snprintf(err, errlen, "cluster: tls: %s %s: not a PEM file (%s)", what, path,
		         S_ISREG(sb.st_mode) ? (sb.st_size <= 0 ? "empty" : "over 1 MiB")
		                             : "not a regular file");
		goto fail;
	}
	buf = tr__malloc((size_t)sb.st_size + 1);
	if (buf == NULL) {
		snprintf(err, errlen, "cluster: tls: out of memory reading %s", path);
		close(fd);
		return TR_ENOMEM;
	}
	while (got < (size_t)sb.st_size) {
		ssize_t r = read(fd, buf + got, (size_t)sb.st_size - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			goto sys_fail;
		if (r == 0)
			break; /* shrank under us: parse what is there */
		got += (size_t)r;
	}
	close(fd);
	buf[got] = '\0';
	*out = buf;
	*len = got + 1;
	return TR_OK;
sys_fail:
	snprintf(err, errlen, "cluster: tls: %s %s: cannot read: %s", what, path, strerror(errno));
fail:
	if (fd >= 0)
		close(fd);
	tr__free(buf);
	return TR_EINVAL;
}

/* "what path: msg: <mbedtls's words> (-0x....)" */
static void mbed_err(char *err, size_t errlen, const char *what, const char *path,
                     const char *msg, int rv)
{
	char m[160];
	mbedtls_strerror(rv, m, sizeof(m));
	snprintf(err, errlen, "cluster: tls: %s %s: %s: %s (mbedtls -0x%04x)", what, path, msg, m,
	         (unsigned)-rv);
}

/* Parses the three files and verifies our certificate as a peer will
 * (see the design notes). */
static int check_files(const tr_cluster_tls_opts *o, const char *cert, size_t certlen,
                       const char *key, size_t keylen, const char *ca, size_t calen, char *err,
                       size_t errlen)
{
	mbedtls_x509_crt own, cas;
	mbedtls_pk_context pk;
	uint32_t flags = 0;
	int rv, rc = TR_EINVAL;
	mbedtls_x509_crt_init(&own);
	mbedtls_x509_crt_init(&cas);
	mbedtls_pk_init(&pk);
	/* A positive result counts certificates that did not parse. */
	if ((rv = mbedtls_x509_crt_parse(&own, (const unsigned char *)cert, certlen)) != 0) {
		mbed_err(err, errlen, "cert_file", o->cert_file, "not a PEM certificate",
		         rv < 0 ? rv : MBEDTLS_ERR_X509_INVALID_FORMAT);
		goto out;
	}
	if ((rv = mbedtls_x509_crt_parse(&cas, (const unsigned char *)ca, calen)) != 0) {
		mbed_err(err, errlen, "ca_file", o->ca_file, "not a PEM certificate",
		         rv < 0 ? rv : MBEDTLS_ERR_X509_INVALID_FORMAT);
		goto out;
	}
	if ((rv = mbedtls_pk_parse_key(&pk, (const unsigned char *)key, keylen, NULL, 0)) != 0) {
		mbed_err(err, errlen, "key_file", o->key_file,
		         "not an unencrypted PEM private key", rv);
		goto out;
	}
	if ((rv = mbedtls_pk_check_pair(&own.pk, &pk)) != 0) {
		snprintf(err, errlen, "cluster: tls: key_file %s is not the key of cert_file %s",
		         o->key_file, o->cert_file);
		goto out;
	}
	if (mbedtls_x509_crt_verify(&own, &cas, NULL, o->server_name, &flags, NULL, NULL) != 0) {
		char why[256];
		int n = mbedtls_x509_crt_verify_info(why, sizeof(why), "", flags);
		/* One reason a line: join them. */
		for (int i = 0; i < n; i++)
			if (why[i] == '\n')
				why[i] = i == n - 1 ? '\0' : ';';
		snprintf(err, errlen, "cluster: tls: cert_file %s does not verify against ca_file %s%s%s: %s",
		         o->cert_file, o->ca_file, o->server_name ? " for server_name " : "",
		         o->server_name ? o->server_name : "", n > 0 ? why : "unknown reason");
		goto out;
	}
	rc = TR_OK;
out:
	mbedtls_pk_free(&pk);
	mbedtls_x509_crt_free(&cas);
	mbedtls_x509_crt_free(&own);
	return rc;
}

/* One nng configuration, mutual TLS. */
static int config_new(nng_tls_config **out, nng_tls_mode mode, const tr_cluster_tls_opts *o,
                      const char *cert, const char *key, const char *ca, char *err,
                      size_t errlen)
{
	const char *step = "nng_tls_config_alloc";
	int rv;
	*out = NULL;
	if ((rv = nng_tls_config_alloc(out, mode)) != 0)
		goto fail;
	step = "nng_tls_config_auth_mode";
	if ((rv = nng_tls_config_auth_mode(*out, NNG_TLS_AUTH_MODE_REQUIRED)) != 0)
		goto fail;
	step = "nng_tls_config_ca_chain (ca_file)";
	if ((rv = nng_tls_config_ca_chain(*out, ca, NULL)) != 0)
		goto fail;
	step = "nng_tls_config_own_cert (cert_file, key_file)";
	if ((rv = nng_tls_config_own_cert(*out, cert, key, NULL)) != 0)
		goto fail;
	step = "nng_tls_config_server_name";
	if (mode == NNG_TLS_MODE_CLIENT && o->server_name != NULL &&
	    (rv = nng_tls_config_server_name(*out, o->server_name)) != 0)
		goto fail;
	return TR_OK;
fail:
	snprintf(err, errlen, "cluster: tls: %s (%s side): %s", step,
	         mode == NNG_TLS_MODE_SERVER ? "listen" : "dial", nng_strerror(rv));
	if (*out != NULL)
		nng_tls_config_free(*out);
	*out = NULL;
	return rv == NNG_ENOMEM ? TR_ENOMEM : TR_EINVAL;
}

static int set(const char *s)
{
	return s != NULL && s[0] != '\0';
}

int tr__cluster_tls_new(const tr_cluster_tls_opts *o, tr__cluster_tls **out, char *err,
                        size_t errlen)
{
	char *cert = NULL, *key = NULL, *ca = NULL;
	size_t certlen = 0, keylen = 0, calen = 0;
	tr__cluster_tls *t = NULL;
	int rc;
	*out = NULL;
	if (o == NULL || !set(o->cert_file) || !set(o->key_file) || !set(o->ca_file)) {
		snprintf(err, errlen, "cluster: tls: cert_file, key_file and ca_file are all required");
		return TR_EINVAL;
	}
	if (o->server_name != NULL && o->server_name[0] == '\0') {
		snprintf(err, errlen, "cluster: tls: server_name is empty (leave it out instead)");
		return TR_EINVAL;
	}
	if ((rc = read_pem("cert_file", o->cert_file, &cert, &certlen, err, errlen)) != TR_OK ||
	    (rc = read_pem("key_file", o->key_file, &key, &keylen, err, errlen)) != TR_OK ||
	    (rc = read_pem("ca_file", o->ca_file, &ca, &calen, err, errlen)) != TR_OK ||
	    (rc = check_files(o, cert, certlen, key, keylen, ca, calen, err, errlen)) != TR_OK)
		goto out;
	if ((t = tr__calloc(1, sizeof(*t))) == NULL) {
		snprintf(err, errlen, "cluster: tls: out of memory");
		rc = TR_ENOMEM;
		goto out;
	}
	if ((rc = config_new(&t->server, NNG_TLS_MODE_SERVER, o, cert, key, ca, err, errlen)) !=
	        TR_OK ||
	    (rc = config_new(&t->client, NNG_TLS_MODE_CLIENT, o, cert, key, ca, err, errlen)) != TR_OK)
		goto out;
	*out = t;
	t = NULL;
out:
	tr__cluster_tls_free(t);
	if (key != NULL)
		memset(key, 0, keylen);
	tr__free(key);
	tr__free(cert);
	tr__free(ca);
	return rc;
}

void tr__cluster_tls_free(tr__cluster_tls *t)
{
	if (t == NULL)
		return;
	if (t->server != NULL)
		nng_tls_config_free(t->server);
	if (t->client != NULL)
		nng_tls_config_free(t->client);
	tr__free(t);
}

int tr__cluster_tls_listener(const tr__cluster_tls *t, nng_listener l)
{
	return t == NULL ? 0 : nng_listener_set_ptr(l, NNG_OPT_TLS_CONFIG, t->server);
}

int tr__cluster_tls_dialer(const tr__cluster_tls *t, nng_dialer d)
{
	return t == NULL ? 0 : nng_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, t->client);
}

int tr__cluster_tls_url(const tr__cluster_tls *t, const char *url, char *out, size_t cap,
                        char *err, size_t errlen)
{
	static const char *const tcp[] = {"tcp://", "tcp4://", "tcp6://"};
	int is_tls = strncmp(url, "tls+", 4) == 0;
	const char *scheme = is_tls ? url + 4 : url;
	const char *why = NULL;
	size_t i;
	for (i = 0; i < sizeof(tcp) / sizeof(tcp[0]); i++)
		if (strncmp(scheme, tcp[i], strlen(tcp[i])) == 0)
			break;
	if (t == NULL && is_tls)
		why = "a tls+ URL needs the tls options (cert_file, key_file, ca_file)";
	else if (t != NULL && i == sizeof(tcp) / sizeof(tcp[0]))
		why = "TLS runs over tcp only (tcp:// or tls+tcp://)";
	if (why != NULL) {
		if (err != NULL)
			snprintf(err, errlen, "cluster: '%s': %s", url, why);
		return TR_EINVAL;
	}
	int n = snprintf(out, cap, "%s%s", t != NULL && !is_tls ? "tls+" : "", url);
	if (n < 0 || (size_t)n >= cap) {
		if (err != NULL)
			snprintf(err, errlen, "cluster: '%s': URL too long (at most %zu bytes)", url,
			         cap - 1);
		return TR_ELIMIT;
	}
	return TR_OK;
}
