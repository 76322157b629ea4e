/*
 * fuzz_cluster_frame.c -- libFuzzer target: bytes from another node's
 * sockets. Each input goes to both readers (cluster/cluster_int.h):
 * tr__cluster_fuzz_frame, a membership frame (msgpack map {v, t, ...}:
 * HELLO, AUTH, MEMBERS, PING, ...), and tr__cluster_fuzz_batch, a data
 * plane batch ("TRB" 1, sender, token, count, length-prefixed envelopes).
 * Each rejects the other's kind at its first check; the hooks abort on
 * a broken invariant.
 */
#include <stdint.h>

#include "cluster/cluster_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	(void)tr__cluster_fuzz_frame(data, size);
	(void)tr__cluster_fuzz_batch(data, size);
	return 0;
}
