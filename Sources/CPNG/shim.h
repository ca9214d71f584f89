#ifndef CNN_DIST_CPNG_SHIM_H
#define CNN_DIST_CPNG_SHIM_H
// libpng (libpng-dev) reports errors by longjmp out of its error callback. Swift cannot
// call setjmp, so every libpng call that can fail runs inside one of the static inline
// functions below, which do the setjmp, turn a longjmp into a return code plus the
// message, and free what they allocated. No libpng error can unwind through Swift.
#include <png.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/// The message buffer for one call; libpng's message is copied here before the longjmp.
typedef struct {
    char text[256];
} cnn_png_message;

typedef struct {
    const unsigned char *data;
    size_t size;
    size_t position;
    cnn_png_message *message;
} cnn_png_source;

static void cnn_png_on_error(png_structp png, png_const_charp text) {
    cnn_png_message *message = (cnn_png_message *)png_get_error_ptr(png);
    if (message) snprintf(message->text, sizeof message->text, "%s", text ? text : "libpng error");
    png_longjmp(png, 1);
}

static void cnn_png_on_warning(png_structp png, png_const_charp text) {
    (void)png; (void)text;   // warnings (e.g. a bad ancillary-chunk CRC) are not fatal
}

static void cnn_png_read_bytes(png_structp png, png_bytep out, size_t count) {
    cnn_png_source *source = (cnn_png_source *)png_get_io_ptr(png);
    if (source->size - source->position < count) {
        png_error(png, "unexpected end of file (the file is truncated)");
    }
    memcpy(out, source->data + source->position, count);
    source->position += count;
}

/// The transforms that give 8-bit samples with alpha dropped: 1 channel for grey and
/// grey+alpha images, 3 for RGB, RGBA and palette images (tRNS is ignored), as PIL's
/// convert("L") / convert("RGB") from those modes do. 16-bit samples keep the high byte.
static void cnn_png_set_transforms(png_structp png, png_infop info) {
    int color_type = png_get_color_type(png, info);
    int bit_depth = png_get_bit_depth(png, info);
    if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (bit_depth == 16) png_set_strip_16(png);
    if ((color_type & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, info, PNG_INFO_tRNS)) png_set_strip_alpha(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
}

/// Decodes into `out` (height rows of width*channels bytes, HWC), which the caller sized
/// from the IHDR chunk (channels: 1 for grey colour types, 3 for the others). Returns 0, or -1 with `message` set. Reads through IEND, so a file
/// that stops anywhere before its end is an error.
static inline int cnn_png_decode(const unsigned char *data, size_t size,
                                 uint32_t expected_width, uint32_t expected_height, int expected_channels,
                                 unsigned char *out, size_t out_capacity, cnn_png_message *message) {
    message->text[0] = 0;
    if (size < 8 || png_sig_cmp(data, 0, 8) != 0) {
        snprintf(message->text, sizeof message->text, "not a PNG file (bad signature)");
        return -1;
    }
    if ((size_t)expected_width * expected_height * (size_t)expected_channels > out_capacity) {
        snprintf(message->text, sizeof message->text, "output buffer too small");
        return -1;
    }
    cnn_png_source source = {data, size, 0, message};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, message, cnn_png_on_error, cnn_png_on_warning);
    if (!png) { snprintf(message->text, sizeof message->text, "out of memory"); return -1; }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        snprintf(message->text, sizeof message->text, "out of memory");
        return -1;
    }
    png_bytep *volatile rows = NULL;
    unsigned char *volatile staging = NULL;
    if (setjmp(png_jmpbuf(png))) {
        free((void *)rows);
        free((void *)staging);
        png_destroy_read_struct(&png, &info, NULL);
        return -1;
    }
    png_set_read_fn(png, &source, cnn_png_read_bytes);
    png_read_info(png, info);
    if (png_get_image_width(png, info) != expected_width || png_get_image_height(png, info) != expected_height) {
        png_error(png, "image size differs from the header read before");
    }
    cnn_png_set_transforms(png, info);
    // If libpng still delivers an alpha channel, read through a staging buffer and drop it.
    int got = png_get_channels(png, info);
    if (png_get_bit_depth(png, info) != 8 || (got != expected_channels && got != expected_channels + 1)) {
        png_error(png, "unexpected row layout after transforms");
    }
    size_t row_bytes = (size_t)expected_width * (size_t)got;
    if (png_get_rowbytes(png, info) != row_bytes) png_error(png, "unexpected row size after transforms");
    unsigned char *target = out;
    if (got != expected_channels) {
        staging = (unsigned char *)malloc(row_bytes * (expected_height ? expected_height : 1));
        if (!staging) png_error(png, "out of memory");
        target = staging;
    }
    rows = (png_bytep *)malloc(sizeof(png_bytep) * (expected_height ? expected_height : 1));
    if (!rows) png_error(png, "out of memory");
    for (uint32_t y = 0; y < expected_height; y++) rows[y] = target + (size_t)y * row_bytes;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    if (staging) {
        size_t pixels = (size_t)expected_width * expected_height;
        for (size_t i = 0; i < pixels; i++) {
            for (int c = 0; c < expected_channels; c++) out[i * expected_channels + c] = staging[i * got + c];
        }
        free((void *)staging);
        staging = NULL;
    }
    free((void *)rows);
    rows = NULL;
    png_destroy_read_struct(&png, &info, NULL);
    return 0;
}

/// A growing output buffer for cnn_png_encode; free `data` with cnn_png_sink_free.
typedef struct {
    unsigned char *data;
    size_t size;
    size_t capacity;
} cnn_png_sink;

static void cnn_png_write_bytes(png_structp png, png_bytep bytes, size_t count) {
    cnn_png_sink *sink = (cnn_png_sink *)png_get_io_ptr(png);
    if (sink->capacity - sink->size < count) {
        size_t capacity = sink->capacity ? sink->capacity : 4096;
        while (capacity - sink->size < count) capacity *= 2;
        unsigned char *grown = (unsigned char *)realloc(sink->data, capacity);
        if (!grown) png_error(png, "out of memory");
        sink->data = grown;
        sink->capacity = capacity;
    }
    memcpy(sink->data + sink->size, bytes, count);
    sink->size += count;
}

static void cnn_png_flush(png_structp png) { (void)png; }

static inline void cnn_png_sink_free(cnn_png_sink *sink) {
    free(sink->data);
    sink->data = NULL;
    sink->size = sink->capacity = 0;
}

/// Encodes rows already in PNG's layout (packed samples below 8 bits, 16-bit samples
/// big-endian): `rows` holds height rows of `row_bytes`. palette: npalette RGB triples;
/// trns: ntrns alpha values for palette entries. text: ntext pairs of NUL-terminated
/// Latin-1 strings, key then value, one after the other, written as uncompressed tEXt
/// chunks before the image data. Returns 0, or -1 with `message` set.
static inline int cnn_png_encode(const unsigned char *rows_data, size_t row_bytes, uint32_t width, uint32_t height,
                                 int color_type, int bit_depth, int interlaced,
                                 const unsigned char *palette, int npalette,
                                 const unsigned char *trns, int ntrns, int compression_level,
                                 const char *text, int ntext,
                                 cnn_png_sink *sink, cnn_png_message *message) {
    message->text[0] = 0;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, message, cnn_png_on_error, cnn_png_on_warning);
    if (!png) { snprintf(message->text, sizeof message->text, "out of memory"); return -1; }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        snprintf(message->text, sizeof message->text, "out of memory");
        return -1;
    }
    png_bytep *volatile rows = NULL;
    png_text *volatile entries_text = NULL;
    if (setjmp(png_jmpbuf(png))) {
        free((void *)rows);
        free((void *)entries_text);
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    png_set_write_fn(png, sink, cnn_png_write_bytes, cnn_png_flush);
    png_set_compression_level(png, compression_level);
    png_set_IHDR(png, info, width, height, bit_depth, color_type,
                 interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (color_type == PNG_COLOR_TYPE_PALETTE) {
        png_color entries[256];
        if (npalette < 1 || npalette > 256) png_error(png, "palette must have 1 to 256 entries");
        for (int i = 0; i < npalette; i++) {
            entries[i].red = palette[3 * i];
            entries[i].green = palette[3 * i + 1];
            entries[i].blue = palette[3 * i + 2];
        }
        png_set_PLTE(png, info, entries, npalette);
        if (ntrns > 0) png_set_tRNS(png, info, trns, ntrns, NULL);
    }
    if (ntext > 0) {
        entries_text = (png_text *)calloc((size_t)ntext, sizeof(png_text));
        if (!entries_text) png_error(png, "out of memory");
        const char *cursor = text;
        for (int i = 0; i < ntext; i++) {
            entries_text[i].compression = PNG_TEXT_COMPRESSION_NONE;
            entries_text[i].key = (png_charp)cursor;
            cursor += strlen(cursor) + 1;
            entries_text[i].text = (png_charp)cursor;
            entries_text[i].text_length = strlen(cursor);
            cursor += strlen(cursor) + 1;
        }
        png_set_text(png, info, entries_text, ntext);
    }
    png_write_info(png, info);
    if (interlaced) png_set_interlace_handling(png);
    rows = (png_bytep *)malloc(sizeof(png_bytep) * (height ? height : 1));
    if (!rows) png_error(png, "out of memory");
    for (uint32_t y = 0; y < height; y++) rows[y] = (png_bytep)rows_data + (size_t)y * row_bytes;
    png_write_image(png, rows);
    png_write_end(png, NULL);
    free((void *)rows);
    rows = NULL;
    free((void *)entries_text);
    entries_text = NULL;
    png_destroy_write_struct(&png, &info);
    return 0;
}

#endif
