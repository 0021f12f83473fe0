/* Standard base64 (RFC 4648, with padding) for the bridge example and the C
 * tests: envelopes are bytes, and line-based transports carry them as text. */
#ifndef SOTTO_EXAMPLE_BASE64_H
#define SOTTO_EXAMPLE_BASE64_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char B64_ALPHABET[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* A NUL-terminated encoding of `len` bytes (free it), NULL if out of memory. */
static char *b64_encode(const uint8_t *data, size_t len) {
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16;
        if (i + 1 < len) v |= (uint32_t)data[i + 1] << 8;
        if (i + 2 < len) v |= data[i + 2];
        out[o++] = B64_ALPHABET[(v >> 18) & 63];
        out[o++] = B64_ALPHABET[(v >> 12) & 63];
        out[o++] = i + 1 < len ? B64_ALPHABET[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? B64_ALPHABET[v & 63] : '=';
    }
    out[o] = 0;
    return out;
}

static int b64_value(char c) {
    const char *p = c ? strchr(B64_ALPHABET, c) : NULL;
    return p ? (int)(p - B64_ALPHABET) : -1;
}

/* Decodes `n` characters of `text` into a new buffer (free it) and its
 * length; NULL when the text is not base64. */
static uint8_t *b64_decode(const char *text, size_t n, size_t *len) {
    if (n % 4) return NULL;
    uint8_t *out = malloc(n / 4 * 3 + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        for (int k = 0; k < 4; k++) {
            char c = text[i + k];
            v[k] = c == '=' && i + 4 == n && k >= 2 ? 0 : b64_value(c);
            if (v[k] < 0) {
                free(out);
                return NULL;
            }
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[o++] = (uint8_t)(w >> 16);
        if (text[i + 2] != '=') out[o++] = (uint8_t)(w >> 8);
        if (text[i + 3] != '=') out[o++] = (uint8_t)w;
    }
    *len = o;
    return out;
}

#endif
