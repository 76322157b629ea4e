/*
 * cluster/tls.h -- TLS for the cluster's nng links: the two nng TLS
 * configurations (server for listeners, client for dialers) built from
 * tr_cluster_tls_opts, applied to every endpoint before it starts, and
 * the URL scheme that goes with them.
 *
 * Both configurations require the peer's certificate
 * (NNG_TLS_AUTH_MODE_REQUIRED): a link is mutual TLS, each end shows a
 * certificate that the CA in ca_file signed, or nng drops it during the
 * TLS handshake, before any SP or cluster frame (so such a peer is
 * never a pipe, never counted as `refused`; nng redials it as for any
 * failed connection). The HMAC handshake (cluster.h) still runs inside
 * TLS: the certificate says "signed by our CA", the secret says "knows
 * this cluster's secret".
 *
 * The files are read and checked with mbedtls here (nng says only
 * "crypto error"), so a start fails with which file and what mbedtls
 * said: unreadable, not PEM, expired, the key not matching the
 * certificate.
 */
#ifndef TR_CLUSTER_TLS_H
#define TR_CLUSTER_TLS_H

#include <stddef.h>

#include <nng/nng.h>

#include "cluster/cluster.h"

typedef struct tr__cluster_tls tr__cluster_tls;

/* Builds both configurations from o (which need not outlive the call).
 * TR_OK with *out; TR_EINVAL (a missing option, a file that cannot be
 * read or parsed, a key that is not the certificate's: err says which),
 * TR_ENOMEM. Free with tr__cluster_tls_free. */
int tr__cluster_tls_new(const tr_cluster_tls_opts *o, tr__cluster_tls **out, char *err,
                        size_t errlen);
/* Drops our hold on both configurations; endpoints that use them keep
 * their own until nng closes them. NULL is fine. */
void tr__cluster_tls_free(tr__cluster_tls *t);

/* Sets NNG_OPT_TLS_CONFIG on an endpoint that has not started yet: the
 * server configuration on a listener, the client one on a dialer. t NULL
 * (plain tcp): nothing, 0. Else nng's error (NNG_ENOTSUP: the endpoint
 * is not tls+tcp). */
int tr__cluster_tls_listener(const tr__cluster_tls *t, nng_listener l);
int tr__cluster_tls_dialer(const tr__cluster_tls *t, nng_dialer d);

/* The URL to listen on or dial, into out (cap bytes). With TLS (t not
 * NULL) tcp://, tcp4:// and tcp6:// become tls+tcp://, tls+tcp4://,
 * tls+tcp6://, and tls+tcp URLs stay; without, URLs stay as they are.
 * TR_OK; TR_EINVAL for a URL of another scheme with TLS (ipc://,
 * inproc:// cannot carry it) or a tls+ URL without; TR_ELIMIT when it
 * does not fit. On error a message goes to err (which may be NULL). */
int tr__cluster_tls_url(const tr__cluster_tls *t, const char *url, char *out, size_t cap,
                        char *err, size_t errlen);

#endif
