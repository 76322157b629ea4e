/*
 * troupe/err.h -- the one error space of the runtime.
 *
 * Every function that can fail returns an int: TR_OK (0) or a negative
 * TR_E* code. One X-macro generates the enum, tr_strerror() and
 * tr_err_name(), so a new code is one line here (as libuv's UV_ERRNO_MAP).
 */
#ifndef TROUPE_ERR_H
#define TROUPE_ERR_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define TR_EXTERN __attribute__((visibility("default")))
#else
#define TR_EXTERN
#endif

/* XX(name, value, description) */
#define TR_ERR_MAP(XX)                                                        \
	XX(OK, 0, "success")                                                     \
	XX(ENOMEM, -1, "out of memory")                                          \
	XX(EINVAL, -2, "invalid argument")                                       \
	XX(ENOACTOR, -3, "no such actor (dead, or a stale reference)")          \
	XX(EFULL, -4, "mailbox full: sender will be woken when space frees")    \
	XX(EREJECTED, -5, "mailbox full: message rejected")                     \
	XX(EDROPPED, -6, "message dropped by the mailbox overflow policy")      \
	XX(ETIMEDOUT, -7, "timed out")                                           \
	XX(ECRASHED, -8, "actor crashed")                                        \
	XX(ESHUTDOWN, -9, "node or actor is shutting down")                     \
	XX(EPROTO, -10, "malformed message (msgpack)")                          \
	XX(ETOOBIG, -11, "message or field too large")                          \
	XX(EEXIST, -12, "name already registered")                              \
	XX(ENOTFOUND, -13, "not found")                                          \
	XX(EINTENSITY, -14, "supervisor restart intensity exceeded")            \
	XX(EKILLED, -15, "actor killed")                                         \
	XX(ELIMIT, -16, "limit reached")                                         \
	XX(EIO, -17, "I/O error")                                                \
	XX(EBUSY, -18, "resource busy")                                          \
	XX(ESTATE, -19, "operation not valid in this state")                    \
	XX(EFAILED, -20, "actor callback failed")                              \
	XX(ECANCELED, -21, "cancelled by the requester")                         \
	XX(ENODEDOWN, -22, "the actor's node is down or unreachable")

typedef enum tr_err {
#define TR__ERR_ENUM(name, val, desc) TR_##name = (val),
	TR_ERR_MAP(TR__ERR_ENUM)
#undef TR__ERR_ENUM
	TR_ERR_MIN_ = -23
} tr_err;

/* Human-readable text for `err`; never NULL (unknown codes included). */
TR_EXTERN const char *tr_strerror(int err);

/* Symbolic name ("TR_EFULL") for `err`; never NULL. */
TR_EXTERN const char *tr_err_name(int err);

#ifdef __cplusplus
}
#endif
#endif
