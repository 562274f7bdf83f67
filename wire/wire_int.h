/*
 * wire/wire_int.h - helpers shared by the files of wire/ only. Never include
 * this from outside wire/.
 */
#ifndef PGSHIFT_WIRE_INT_H
#define PGSHIFT_WIRE_INT_H

#include "wire/wire.h"

/* Bytes left in the reader (0 once it went bad). */
size_t wire_rd_left(const wire_rd_t *rd);

/*
 * Skip n length-prefixed values (int32 length, -1 = NULL, then the bytes),
 * as in Bind, FunctionCall and DataRow. Marks rd bad on overrun or on a
 * negative length other than -1. The count is checked against the bytes left
 * before any value is read, so a huge n costs nothing.
 */
void wire_rd_skip_values(wire_rd_t *rd, uint32_t n);

/* Read n big-endian int16/int32 items as a view; NULL when n == 0 or bad. */
const uint8_t *wire_rd_array(wire_rd_t *rd, uint32_t n, size_t item_len);

/* The 0/1/n format-code rule of Bind and FunctionCall. */
bool wire_formats_ok(uint16_t n_formats, uint16_t n_values);

#endif
