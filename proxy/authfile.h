/*
 * proxy/authfile.h - PgBouncer-style auth_file: who may log into pgshift
 * and with which secret.
 *
 * Format, one entry per line:
 *
 *     "user" "secret"
 *
 * - Both fields are double-quoted; a doubled quote ("") inside a quoted
 *   string stands for one quote character. Fields are separated by spaces or
 *   tabs. Further quoted fields after the secret are ignored (PgBouncer
 *   compatibility with old pg_auth files), as is a trailing ';' or '#'
 *   comment. Anything else after the secret is an error.
 * - Lines that are empty, blank, or whose first non-blank character is ';' or
 *   '#' are skipped. Both "\n" and "\r\n" line ends are accepted.
 * - The secret is a clear password, an md5 secret ("md5" + 32 lower-case hex
 *   digits) or a SCRAM secret ("SCRAM-SHA-256$..."; it must parse, see
 *   px_scram_secret_parse()). See proxy/scram.h for what each kind allows.
 * - An empty user name, an empty secret and a user listed twice are errors.
 *
 * Errors read "FILE:LINE: reason". The table is immutable once built; a
 * reload builds a new one and swaps it.
 */
#ifndef PGSHIFT_PX_AUTHFILE_H
#define PGSHIFT_PX_AUTHFILE_H

#include <stddef.h>

#include "common/cm.h"

#define PX_AUTHFILE_MAX_LEN (64u * 1024 * 1024) /* biggest auth_file accepted, bytes */

typedef struct px_authfile px_authfile_t; /* opaque, heap */

/* Read and parse the file at path. On 0, *out is owned (px_authfile_free()).
 * On -1, *err is owned (free()): "FILE:LINE: reason", or "FILE: reason" for
 * an I/O error. Borrows path. */
int px_authfile_load(const char *path, px_authfile_t **out, char **err) MUST_CHECK;

/* Parse text (NUL-terminated); path only names it in errors. Same results as
 * px_authfile_load(). Borrows text and path. */
int px_authfile_parse(const char *text, const char *path, px_authfile_t **out, char **err)
    MUST_CHECK;

/* The secret stored for user, or NULL. The pointer is borrowed from af and
 * valid until px_authfile_free(af). O(log n). */
const char *px_authfile_find(const px_authfile_t *af, const char *user);

/* Number of entries. */
size_t px_authfile_count(const px_authfile_t *af);

/* Wipes the secrets and frees; NULL is fine. */
void px_authfile_free(px_authfile_t *af);

#endif
