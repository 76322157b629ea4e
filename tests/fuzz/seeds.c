/*
 * seeds.c -- writes the seed corpora of the envelope and cluster_frame
 * targets (tests/fuzz/corpus/<target>/) with the runtime's own encoder:
 * envelopes from tr_msg_encode, membership frames as cluster.c packs them
 * (one of each type), data-plane batches as remote.c frames them
 * (envelopes, a NAMES list). Run by hand when the formats change:
 *
 *   build-x/tests/fuzz/fuzz_seeds tests/fuzz/corpus
 */
#include <stdio.h>
#include <string.h>

#include <msgpack.h>

#include "cluster/cluster_int.h"
#include "msg/msg_int.h"
#include "pipe/mp.h"

static const char *root;

static void put(const char *target, const char *name, const void *p, size_t n)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s/%s", root, target, name);
	FILE *f = fopen(path, "wb");
	if (f == NULL || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
		perror(path);
		return;
	}
}

/* A body map {text = s, n = 42, tags = [s, true, nil, 1.5]}. */
static tr_body *body_of(const char *s)
{
	tr_buf b;
	msgpack_packer pk;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	msgpack_pack_map(&pk, 3);
	tr__mp_pack_cstr(&pk, "text");
	tr__mp_pack_cstr(&pk, s);
	tr__mp_pack_cstr(&pk, "n");
	msgpack_pack_int(&pk, 42);
	tr__mp_pack_cstr(&pk, "tags");
	msgpack_pack_array(&pk, 4);
	tr__mp_pack_cstr(&pk, s);
	msgpack_pack_true(&pk);
	msgpack_pack_nil(&pk);
	msgpack_pack_double(&pk, 1.5);
	tr_body *body = tr_body_new(b.data, b.len);
	tr_buf_free(&b);
	return body;
}

/* Four envelopes: plain, an ask with everything set, an error reply, a
 * NAMES list (the cluster's own tag) as remote.c sends it. */
static int envelopes(tr_msg *m[4])
{
	uint32_t acme;
	tr_buf b;
	msgpack_packer pk;
	if (tr_tenant_intern("acme", 4, &acme) != TR_OK)
		return -1;
	for (int i = 0; i < 4; i++)
		if ((m[i] = tr_msg_new()) == NULL)
			return -1;
	m[0]->to = (tr_ref){1, 3, 1};
	m[0]->tag = 7;
	m[1]->from = (tr_ref){2, 9, 4};
	m[1]->to = (tr_ref){1, 300, 70000};
	m[1]->tag = 0x100;
	m[1]->flags = TR_MSGF_ASK;
	m[1]->attempt = 2;
	m[1]->corr = 0x1234567890ull;
	m[1]->deadline = 1700000000000000ull;
	m[1]->trace_hi = 0x0af7651916cd43ddull;
	m[1]->trace_lo = 0x8448eb211c80319cull;
	m[1]->tenant = acme;
	m[1]->arg = 5;
	m[1]->body = body_of("hello, world");
	m[2]->from = (tr_ref){1, 300, 70000};
	m[2]->to = (tr_ref){2, 9, 4};
	m[2]->flags = TR_MSGF_REPLY | TR_MSGF_ERROR;
	m[2]->corr = 0x1234567890ull;
	m[2]->err = TR_ETIMEDOUT;
	m[2]->tag = TR_TAG_REPLY_ERR;
	m[3]->from = (tr_ref){2, 1, 1};
	m[3]->to = (tr_ref){1, 0, 1};
	m[3]->tag = TR_TAG_SYS_BASE + 0x102u; /* remote.c TAG_NAMES */
	m[3]->flags = TR_MSGF_SYSTEM;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	msgpack_pack_array(&pk, 2);
	msgpack_pack_array(&pk, 3);
	tr__mp_pack_cstr(&pk, "rag#0");
	msgpack_pack_uint32(&pk, 12);
	msgpack_pack_uint32(&pk, 1);
	msgpack_pack_array(&pk, 3);
	tr__mp_pack_cstr(&pk, "pipeline:assistant");
	msgpack_pack_uint32(&pk, 40);
	msgpack_pack_uint32(&pk, 3);
	m[3]->body = tr_body_new(b.data, b.len);
	tr_buf_free(&b);
	return m[1]->body && m[3]->body ? 0 : -1;
}

static void wr32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

/* A batch from node 2 with envelopes m[from..to). */
static void batch(const char *name, tr_msg *m[4], int from, int to)
{
	tr_buf b;
	tr_buf_init(&b);
	tr__buf_reserve(&b, 28);
	memcpy(b.data, "TRB\1", 4);
	wr32(b.data + 4, 2);
	memset(b.data + 8, 0xab, 16);
	wr32(b.data + 24, (uint32_t)(to - from));
	b.len = 28;
	for (int i = from; i < to; i++) {
		size_t at = b.len;
		tr__buf_reserve(&b, 4);
		b.len += 4;
		tr_msg_encode(m[i], &b);
		wr32(b.data + at, (uint32_t)(b.len - at - 4));
	}
	put("cluster_frame", name, b.data, b.len);
	tr_buf_free(&b);
}

static void kv_u(msgpack_packer *pk, const char *k, uint64_t v)
{
	tr__mp_pack_cstr(pk, k);
	msgpack_pack_uint64(pk, v);
}

static void kv_s(msgpack_packer *pk, const char *k, const char *v)
{
	tr__mp_pack_cstr(pk, k);
	tr__mp_pack_cstr(pk, v);
}

/* name, id, addr, labels, inc: a member as HELLO and MEMBERS carry it */
static void pk_member(msgpack_packer *pk, const char *name, uint64_t id)
{
	kv_s(pk, "name", name);
	kv_u(pk, "id", id);
	kv_s(pk, "addr", "tcp://127.0.0.1:7401");
	tr__mp_pack_cstr(pk, "labels");
	msgpack_pack_array(pk, 2);
	tr__mp_pack_cstr(pk, "gpu");
	tr__mp_pack_cstr(pk, "eu-west");
	kv_u(pk, "inc", 1700000000123ull);
}

/* One frame of each type, packed as cluster.c's send_* pack them. */
static void frames(void)
{
	static const unsigned char key[32] = {1, 2, 3};
	for (unsigned t = 1; t <= 9; t++) {
		static const unsigned nfields[] = {0, 7, 1, 1, 2, 2, 2, 2, 1, 1};
		static const char *const names[] = {"", "hello", "auth", "members", "ping", "ack",
		                                    "ping_req", "ping_req_ack", "leave", "leave_ack"};
		char file[32];
		tr_buf b;
		msgpack_packer pk;
		tr_buf_init(&b);
		tr__mp_packer(&pk, &b);
		msgpack_pack_map(&pk, nfields[t] + 2);
		kv_u(&pk, "v", TR_CLUSTER_VERSION);
		kv_u(&pk, "t", t);
		switch (t) {
		case F_HELLO:
			pk_member(&pk, "n2", 2);
			kv_s(&pk, "data", "tcp://127.0.0.1:7402");
			tr__mp_pack_cstr(&pk, "nonce");
			msgpack_pack_bin(&pk, NONCE_LEN);
			msgpack_pack_bin_body(&pk, key, NONCE_LEN);
			break;
		case F_AUTH:
			tr__mp_pack_cstr(&pk, "mac");
			msgpack_pack_bin(&pk, MAC_LEN);
			msgpack_pack_bin_body(&pk, key, MAC_LEN);
			break;
		case F_MEMBERS:
			tr__mp_pack_cstr(&pk, "list");
			msgpack_pack_array(&pk, 2);
			msgpack_pack_map(&pk, 6);
			pk_member(&pk, "n2", 2);
			kv_u(&pk, "state", TR_MEMBER_ALIVE);
			msgpack_pack_map(&pk, 6);
			pk_member(&pk, "n3", 3);
			kv_u(&pk, "state", TR_MEMBER_LEFT);
			break;
		case F_PING:
		case F_ACK:
			kv_u(&pk, "seq", 77);
			kv_u(&pk, "ts", 123456789012ull);
			break;
		case F_PING_REQ:
		case F_PING_REQ_ACK:
			kv_s(&pk, "target", "n3");
			kv_u(&pk, "seq", 78);
			break;
		default:
			kv_s(&pk, "name", "n2");
			break;
		}
		snprintf(file, sizeof(file), "frame_%s", names[t]);
		put("cluster_frame", file, b.data, b.len);
		tr_buf_free(&b);
	}
}

int main(int argc, char **argv)
{
	static const char *const names[] = {"plain", "ask", "error_reply", "names"};
	tr_msg *m[4] = {NULL, NULL, NULL, NULL};
	if (argc != 2) {
		fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
		return 2;
	}
	root = argv[1];
	if (envelopes(m) != 0)
		return 1;
	for (int i = 0; i < 4; i++) {
		tr_buf b;
		tr_buf_init(&b);
		if (tr_msg_encode(m[i], &b) != TR_OK)
			return 1;
		put("envelope", names[i], b.data, b.len);
		tr_buf_free(&b);
	}
	frames();
	batch("batch_one", m, 0, 1);
	batch("batch_all", m, 0, 4);
	batch("batch_names", m, 3, 4);
	batch("batch_empty", m, 0, 0);
	for (int i = 0; i < 4; i++)
		tr_msg_free(m[i]);
	return 0;
}
