"""Text normalisation over whole batches, in numba kernels straight over the Arrow UTF-8 buffer:
every character lowercased (Unicode simple lowercase, final sigma folded), every run of
punctuation, symbols, underscores and whitespace one space, the ends stripped; words found
with an ASCII fast path (8 bytes at a time) and hashed as they are walked."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
from datamix.dedup.jit import njit, prange  # numba, imported there (first)
from llvmlite import ir
from numba.core import types
from numba.core.extending import intrinsic
from numba.cpython.unsafe.numbers import trailing_zeros

if TYPE_CHECKING:
    import polars as pl

from datamix.dedup.hashing import (_ALL, _HIGH, _ONES, _SPACE, _WORD_SEED, _feed, _feed_bytes, _feed_code_point,
                                   _finish_word, _mix64)
from datamix.dedup.warm import load_cached_lightly


# ---------------------------------------------------------------- characters


@njit(inline="always")
def _decode(data, i, end):
    """(code point, byte length) of the UTF-8 sequence at data[i]; bad bytes decode as themselves."""
    c = np.int64(data[i])
    if c < 0x80:
        return c, 1
    if c >= 0xF0 and i + 3 < end:
        return ((c & 0x07) << 18) | ((np.int64(data[i + 1]) & 0x3F) << 12) | (
            (np.int64(data[i + 2]) & 0x3F) << 6) | (np.int64(data[i + 3]) & 0x3F), 4
    if c >= 0xE0 and i + 2 < end:
        return ((c & 0x0F) << 12) | ((np.int64(data[i + 1]) & 0x3F) << 6) | (np.int64(data[i + 2]) & 0x3F), 3
    if c >= 0xC0 and i + 1 < end:
        return ((c & 0x1F) << 6) | (np.int64(data[i + 1]) & 0x3F), 2
    return c, 1


@njit(inline="always")
def _is_separator(cp):
    """True for punctuation, symbols, whitespace and control characters (folded to one space).

    Exact for ASCII (only a-z, A-Z, 0-9 are word characters; '_' folds like
    punctuation); for the rest of Unicode it covers the Latin-1 punctuation, the
    general punctuation, arrow/math/technical/box/symbol blocks, CJK and
    full-width punctuation and emoji, which is what appears in practice.
    """
    if cp < 0x80:
        return not ((0x61 <= cp <= 0x7A) or (0x30 <= cp <= 0x39) or (0x41 <= cp <= 0x5A))
    if cp <= 0xBF:  # Latin-1 controls and punctuation, except the letters/digits among them
        return not (cp == 0xAA or cp == 0xB5 or cp == 0xBA or cp == 0xB2 or cp == 0xB3 or cp == 0xB9
                    or 0xBC <= cp <= 0xBE)
    if cp == 0xD7 or cp == 0xF7:
        return True
    if 0x2000 <= cp <= 0x2BFF:  # general punctuation .. misc symbols and arrows
        return not (0x2070 <= cp <= 0x209F or 0x2100 <= cp <= 0x218F or 0x2460 <= cp <= 0x24FF)
    if 0x3000 <= cp <= 0x303F and not (0x3005 <= cp <= 0x3007):
        return True
    if 0xFE30 <= cp <= 0xFE4F or cp == 0xFEFF:
        return True
    if 0xFF00 <= cp <= 0xFF0F or 0xFF1A <= cp <= 0xFF20 or 0xFF3B <= cp <= 0xFF40 or 0xFF5B <= cp <= 0xFF65:
        return True
    if 0x1F000 <= cp <= 0x1FAFF:
        return True
    return False


# ASCII: the lowercased byte of a word character, 0 for a separator.
ASCII_FOLD = np.array(
    [c + 32 if 0x41 <= c <= 0x5A else c if (0x30 <= c <= 0x39 or 0x61 <= c <= 0x7A) else 0 for c in range(128)],
    dtype=np.uint8,
)


@functools.cache
def lower_table() -> np.ndarray:
    """int32 lowercase code point per code point up to the last cased one (Adlam).

    From Python's str.lower (the Unicode data of the running Python), done once per
    process on one long string (~20 ms). 'İ' maps to 'i' (its full lowercase adds a
    combining dot) and final sigma 'ς' to 'σ' (lowercase of 'Σ' depends on context).
    """
    limit = 0x1E944  # past the lowercase Adlam letters (U+1E922..U+1E943)
    text = "".join(map(chr, range(limit))).replace("\u0130", "I")
    table = np.frombuffer(text.lower().encode("utf-32-le", "surrogatepass"), dtype=np.int32).copy()
    table[0x3C2] = 0x3C3
    if len(table) != limit or np.any(table[table] != table):  # one code point each, and idempotent
        raise RuntimeError("unexpected lowercase mapping in this Python's Unicode data")
    return table


@njit(inline="always")
def next_char(data, i, end, lower):
    """(lowercased code point, or 0 for a separator; byte length) of the character at data[i]."""
    c = data[i]
    if c < 0x80:
        return np.int64(ASCII_FOLD[c]), 1
    cp, n = _decode(data, i, end)
    if _is_separator(cp):
        return np.int64(0), n
    if cp < lower.shape[0]:
        cp = np.int64(lower[cp])
    return cp, n


# ---------------------------------------------------------------- the word pass
# Lowercase + fold + split + hash the words of a document. All-ASCII documents
# (most) in two phases: byte-parallel range tests on 8 bytes at a time give the
# lowercased bytes and a bit mask of word bytes (`_ascii_word_mask`), then the
# word starts and ends are walked with count-trailing-zeros (`_ascii_word_hashes`).
# Other documents take `word_hashes_mixed`: 8 ASCII bytes per step where it can,
# one decoded character per step elsewhere, both sharing the word state (h, pack,
# nb), so a word may start in one and end in the other.


@njit(inline="always")
def _at_least(x, c):
    """0x80 in each byte of x (all bytes < 0x80) that is >= c (1 <= c <= 128), else 0."""
    return (x + _ONES * np.uint64(0x80 - c)) & _HIGH


@njit(inline="always")
def _byte_index(bits):
    """Index of the lowest byte whose 0x80 bit is set (bits != 0)."""
    return np.int64(trailing_zeros(bits)) >> 3


@intrinsic
def _load8(typingctx, words, i):
    """The 8 bytes at byte offset i (any alignment) of a uint8 or uint64 array as one
    little-endian uint64, in a single unaligned load: x86 and ARM allow them, numba's
    array indexing has no such access (two aligned loads and shifts cost the word pass
    ~25%). Callers keep i + 8 within the array (`_load8_text` does for text buffers,
    the word-pass scratch is padded for it)."""
    if not (isinstance(words, types.Array) and words.dtype in (types.uint8, types.uint64) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        base = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
        offset = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = builder.bitcast(builder.gep(base, [offset]), ir.IntType(64).as_pointer())
        return builder.load(ptr, align=1)

    return types.uint64(words, i), codegen


@njit(inline="always")
def _load8_text(data, i):
    """The bytes data[i:i + 8] as a little-endian uint64 (zeros past the buffer's end):
    texts are read in place from the Arrow buffer, which need not be padded."""
    if i + 8 <= data.shape[0]:
        return _load8(data, i)
    x = np.uint64(0)
    for k in range(data.shape[0] - i):
        x |= np.uint64(data[i + k]) << np.uint64(8 * k)
    return x


_GATHER = np.uint64(0x0002040810204081)  # (bits at 0x80 of each byte) * this >> 56 = one bit per byte


@njit(inline="always")
def _word_bits(x):
    """0x80 in each byte of x (all ASCII) that is a word byte (a-z, A-Z, 0-9)."""
    upper = _at_least(x, 0x41) & ~_at_least(x, 0x5B)
    low = x | (upper >> np.uint64(2))
    return (_at_least(low, 0x61) & ~_at_least(low, 0x7B)) | (_at_least(x, 0x30) & ~_at_least(x, 0x3A))


@njit(inline="always")
def _lower_ascii(x):
    return x | ((_at_least(x, 0x41) & ~_at_least(x, 0x5B)) >> np.uint64(2))


@njit(inline="always")
def _ascii_word_mask(data, start, end, wmask, lowered):
    """Bit p of wmask[p >> 6] = byte start + p is a word byte, `lowered` = the text's
    bytes lowercased (as uint64 words from its start); False if the text is not all ASCII.

    A fixed-stride pass (no step depends on what the previous one found), so the loads
    and the byte-parallel tests of successive 8-byte chunks overlap in the pipeline."""
    n = end - start
    n_chunks = (n + 7) >> 3
    high = np.uint64(0)
    for blk in range((n_chunks + 7) >> 3):
        m = np.uint64(0)
        for t in range(8):
            pos = start + 8 * (8 * blk + t)
            nv = end - pos
            if nv <= 0:
                break
            x = _load8_text(data, pos)
            if nv < 8:
                x &= ~((_ALL << np.uint64(1)) << np.uint64(8 * nv - 1))
            high |= x
            low = _lower_ascii(x)
            lowered[8 * blk + t] = low
            word = (_at_least(low, 0x61) & ~_at_least(low, 0x7B)) | (_at_least(x, 0x30) & ~_at_least(x, 0x3A))
            m |= ((word * _GATHER) >> np.uint64(56)) << np.uint64(8 * t)
        wmask[blk] = m
    return high & _HIGH == 0


@njit(inline="always")
def _ascii_word_hashes(lowered, start, end, wmask, words):
    """Hash the words marked in wmask (see `_ascii_word_mask`); returns the word count.

    Word starts are word bits whose previous bit is clear, ends those whose next bit is
    clear; the k-th start pairs with the k-th end, each stream walked with
    count-trailing-zeros. A word's bytes come from one 8-byte load at its start,
    lowercased byte-parallel: the same hash as `word_hash` on the normalised word."""
    n_blocks = (((end - start + 7) >> 3) + 7) >> 3
    n_words = 0
    be = 0
    me = np.uint64(0)
    prev_top = np.uint64(0)  # last bit of the previous block (a word running into this one)
    for bs in range(n_blocks):
        w = wmask[bs]
        ms = w & ~((w << np.uint64(1)) | prev_top)
        prev_top = w >> np.uint64(63)
        while ms != 0:
            s = bs * 64 + np.int64(trailing_zeros(ms))
            ms &= ms - np.uint64(1)
            while me == 0:  # the ends of block be (the next word end is at or after s)
                nxt = wmask[be + 1] & np.uint64(1) if be + 1 < n_blocks else np.uint64(0)
                we = wmask[be]
                me = we & ~((we >> np.uint64(1)) | (nxt << np.uint64(63)))
                if me == 0:
                    be += 1
            e = be * 64 + np.int64(trailing_zeros(me))
            me &= me - np.uint64(1)
            if me == 0:
                be += 1
            length = e - s + 1
            pos = s
            if length < 16:
                # Up to 15 bytes without a branch on the length (word lengths vary
                # from word to word, so such a branch mispredicts often): both
                # candidate states are computed and one is selected.
                p0 = _load8(lowered, pos)
                p1 = _load8(lowered, pos + 8)
                long = np.uint64(0) - np.uint64(length >> 3)  # all ones when length >= 8
                h = (_mix64(_WORD_SEED ^ p0) & long) | (_WORD_SEED & ~long)
                last = ((p1 & long) | (p0 & ~long)) & ~(_ALL << np.uint64(8 * (length & 7)))
                words[n_words] = _mix64(h ^ last ^ (np.uint64(length) << np.uint64(56)))
            else:
                h = _WORD_SEED
                rem = length
                while rem >= 8:
                    h = _mix64(h ^ _load8(lowered, pos))
                    pos += 8
                    rem -= 8
                piece = _load8(lowered, pos) & ~(_ALL << np.uint64(8 * rem))
                words[n_words] = _mix64(h ^ piece ^ (np.uint64(length) << np.uint64(56)))
            n_words += 1
    return n_words


@njit(cache=True)
def word_hashes(data, start, end, lower, words):
    """Normalise + split + hash the words of data[start:end] into `words`; returns the
    word count. Same hashes as word_hash on normalised words.

    All-ASCII texts (most) take the bit-mask path: classify every byte first
    (`_ascii_word_mask`), then walk the word starts and ends (`_ascii_word_hashes`);
    others the character walk (`word_hashes_mixed`)."""
    wmask, lowered = word_pass_scratch(end - start)
    return word_hashes_into(data, start, end, lower, words, wmask, lowered)


@njit(inline="always")
def word_pass_scratch(longest):
    """(wmask, lowered) scratch arrays for `word_hashes_into` on texts of up to `longest` bytes."""
    n_blocks = (((longest + 7) >> 3) + 7) >> 3
    # lowered: + 2 words, as a word's bytes are read with loads of up to 16 bytes past
    # its start; bytes past a text's end are never hashed (masked), so stale ones from
    # an earlier text in a reused scratch array do no harm.
    return np.empty(n_blocks, np.uint64), np.empty(8 * n_blocks + 2, np.uint64)


@njit(inline="always")
def word_hashes_into(data, start, end, lower, words, wmask, lowered):
    """`word_hashes` with caller-owned scratch (from `word_pass_scratch`), reused across texts."""
    if _ascii_word_mask(data, start, end, wmask, lowered):
        return _ascii_word_hashes(lowered, start, end, wmask, words)
    return word_hashes_mixed(data, start, end, lower, words)


@njit(cache=True)
def word_hashes_mixed(data, start, end, lower, words):
    """Normalise + split + hash the words of data[start:end] into `words`; returns the
    word count. Same hashes as word_hash on normalised words.

    Each step loads the 8 bytes at the current position; if they are ASCII, one step
    skips the separators before a word and takes the word's bytes up to the next
    separator (or all 8) at once, so a short word costs one step with branches that
    almost always go the same way."""
    n_words = 0
    h, pack, nb = _WORD_SEED, np.uint64(0), 0
    i = start
    while i < end:
        nv = min(8, end - i)  # bytes of this document in the 8 loaded
        x = _load8_text(data, i) & ~((_ALL << np.uint64(1)) << np.uint64(8 * nv - 1))
        if x & _HIGH == 0:
            upper = _at_least(x, 0x41) & ~_at_least(x, 0x5B)
            low = x | (upper >> np.uint64(2))  # 'A'..'Z' + 0x20
            word = (_at_least(low, 0x61) & ~_at_least(low, 0x7B)) | (_at_least(x, 0x30) & ~_at_least(x, 0x3A))
            if nb == 0:  # skip the separators before the next word
                if word == 0:
                    i += nv
                    continue
                q = _byte_index(word)
                i += q
                nv -= q
                low >>= np.uint64(8 * q)
                word >>= np.uint64(8 * q)
            sep = ~word & _HIGH & ~((_ALL << np.uint64(1)) << np.uint64(8 * nv - 1))
            r = nv if sep == 0 else _byte_index(sep)
            piece = low & ~((_ALL << np.uint64(1)) << np.uint64(8 * r - 1)) if r > 0 else np.uint64(0)
            if r > 0:
                h, pack, nb = _feed_bytes(h, pack, nb, piece, r)
            i += r
            if r < nv:  # a separator ends the word
                words[n_words] = _finish_word(h, pack, nb)
                n_words += 1
                h, pack, nb = _WORD_SEED, np.uint64(0), 0
                i += 1
            continue
        # one character (not all ASCII ahead): decode, lowercase, fold
        c = data[i]
        if c < 0x80:
            cp = np.int64(ASCII_FOLD[c])
            n = 1
            if cp != 0:
                h, pack, nb = _feed(h, pack, nb, cp)
        else:
            cp, n = next_char(data, i, end, lower)
            if cp != 0:
                h, pack, nb = _feed_code_point(h, pack, nb, cp)
        if cp == 0 and nb > 0:
            words[n_words] = _finish_word(h, pack, nb)
            n_words += 1
            h, pack, nb = _WORD_SEED, np.uint64(0), 0
        i += n
    if nb > 0:
        words[n_words] = _finish_word(h, pack, nb)
        n_words += 1
    return n_words


@njit(inline="always")
def _put_utf8(out, w, cp):
    """Write code point `cp` as UTF-8 at out[w]; return the new write position."""
    if cp < 0x80:
        out[w] = cp
        return w + 1
    if cp < 0x800:
        out[w] = 0xC0 | (cp >> 6)
        out[w + 1] = 0x80 | (cp & 0x3F)
        return w + 2
    if cp < 0x10000:
        out[w] = 0xE0 | (cp >> 12)
        out[w + 1] = 0x80 | ((cp >> 6) & 0x3F)
        out[w + 2] = 0x80 | (cp & 0x3F)
        return w + 3
    out[w] = 0xF0 | (cp >> 18)
    out[w + 1] = 0x80 | ((cp >> 12) & 0x3F)
    out[w + 2] = 0x80 | ((cp >> 6) & 0x3F)
    out[w + 3] = 0x80 | (cp & 0x3F)
    return w + 4


@njit(cache=True, parallel=True)
def _normalize_all(data, offsets, lower, out, out_len):
    """Normalise each text into its slot out[2 * offsets[d]:], length in out_len[d].

    Lowercasing can grow a character (U+023A, 2 bytes -> U+2C65, 3 bytes) but never
    doubles a text, so slots of twice the input size cannot overflow.
    """
    for d in prange(offsets.shape[0] - 1):
        i, end = offsets[d], offsets[d + 1]
        base = 2 * (offsets[d] - offsets[0])
        w = base
        pending_space = False
        while i < end:
            cp, n = next_char(data, i, end, lower)
            if cp == 0:
                pending_space = w > base
            else:
                if pending_space:
                    out[w] = _SPACE
                    w += 1
                    pending_space = False
                w = _put_utf8(out, w, cp)
            i += n
        out_len[d] = w - base


def utf8_buffers(texts: list[str] | pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(bytes uint8, offsets int64 of len n+1) of the texts, zero-copy where Arrow allows; null -> ''."""
    import polars as pl
    import pyarrow as pa

    s = texts if isinstance(texts, pl.Series) else pl.Series("text", texts, dtype=pl.String)
    # the oldest compatibility level gives Arrow's large_string (64-bit offsets), not a view type
    arr = s.cast(pl.String).fill_null("").rechunk().to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arrow_buffers(arr)


def arrow_buffers(arr) -> tuple[np.ndarray, np.ndarray]:
    """(bytes uint8, offsets int64) of an Arrow string array (null -> ''), the bytes used where
    they are: 32-bit offsets are widened (a cast to large_string would copy the bytes too), a
    large_string taken as it is (a cast, even a no-op one, imports pyarrow.compute: ~0.05 s a run).
    Both read-only, as the buffers of a polars Series are: numba compiles a kernel once per array
    type, and a writable pair cost a second compilation of the signing and shingling kernels
    (~10 s each on a fresh checkout)."""
    import pyarrow as pa

    if arr.null_count:
        import pyarrow.compute as pc

        arr = pc.fill_null(arr, "")
    if arr.type == pa.string():
        _, off_buf, data_buf = arr.buffers()
        offsets = np.frombuffer(off_buf, np.int32)[arr.offset : arr.offset + len(arr) + 1].astype(np.int64)
    else:
        if arr.type != pa.large_string():
            arr = arr.cast(pa.large_string())
        _, off_buf, data_buf = arr.buffers()
        offsets = np.frombuffer(off_buf, np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    data.flags.writeable = offsets.flags.writeable = False
    return data, offsets


def normalized_buffers(texts: list[str] | pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The normalised texts as packed (bytes, offsets)."""
    data, offsets = utf8_buffers(texts)
    return normalize_buffers(data, offsets)


def normalize_buffers(data: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalise texts given as (UTF-8 bytes, offsets); packed (bytes, offsets)."""
    out = np.empty(2 * int(offsets[-1] - offsets[0]), np.uint8)
    out_len = np.empty(len(offsets) - 1, np.int64)
    _normalize_all(data, offsets, lower_table(), out, out_len)
    new_offsets = np.zeros(len(out_len) + 1, np.int64)
    np.cumsum(out_len, out=new_offsets[1:])
    packed = np.empty(int(new_offsets[-1]), np.uint8)
    _copy_slots(out, 2 * (offsets[:-1] - offsets[0]), out_len, packed, new_offsets)
    return packed, new_offsets


@njit(cache=True, parallel=True)
def _copy_slots(src, src_starts, lengths, dst, dst_offsets):
    for d in prange(lengths.shape[0]):
        s, t = src_starts[d], dst_offsets[d]
        for k in range(lengths[d]):
            dst[t + k] = src[s + k]


def normalize(texts: list[str] | pl.Series) -> list[str]:
    """The normalised texts as strings (for inspection and tests; the kernels use the buffers)."""
    data, offsets = normalized_buffers(texts)
    raw = data.tobytes()
    return [raw[offsets[d] : offsets[d + 1]].decode("utf-8", "replace") for d in range(len(offsets) - 1)]


load_cached_lightly(globals())
