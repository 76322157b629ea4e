/*
 * core/err.c -- tr_strerror / tr_err_name from TR_ERR_MAP.
 */
#include <troupe/err.h>

const char *tr_strerror(int err)
{
	switch (err) {
#define XX(name, val, desc) case (val): return desc;
		TR_ERR_MAP(XX)
#undef XX
	}
	return "unknown error";
}

const char *tr_err_name(int err)
{
	switch (err) {
#define XX(name, val, desc) case (val): return "TR_" #name;
		TR_ERR_MAP(XX)
#undef XX
	}
	return "TR_E?";
}
