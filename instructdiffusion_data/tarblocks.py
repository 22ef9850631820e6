"""Tar members written by hand: the bytes Python's ``tarfile`` writes in PAX_FORMAT for the shard
writer's members (mtime 0, mode 0644, owner 0, no user names), without its per-member header building,
which was most of the writer's cost per member. Members ``tarfile`` would give a pax extended header
(long or non-ASCII names, huge sizes) get it from ``tarfile`` itself."""

from __future__ import annotations

import tarfile


def tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


# The tar is assembled by hand, byte-identical to ``tarfile`` in PAX_FORMAT with the :func:`tarinfo`
# settings: tarfile's header building was most of the writer's per-member cost. A ustar header block
# is name[100] mode[8] uid[8] gid[8] size[12] mtime[12] chksum[8] typeflag[1] linkname[100] magic[6]
# version[2] uname[32] gname[32] devmajor[8] devminor[8] prefix[155] and 12 bytes of padding; numbers
# are zero-padded octal ending in NUL, as tarfile's ``itn`` writes them.
_BLOCK = tarfile.BLOCKSIZE  # 512
_RECORD = tarfile.RECORDSIZE  # 20 blocks: tarfile pads a closed archive to a whole record
_USTAR_NAME_MAX = 100  # longer (or non-ASCII) names go to a pax extended header
_USTAR_SIZE_LIMIT = 8 ** 11  # 11 octal digits; larger members need a pax "size" record
_HDR_IDS = b"0000644\0" b"0000000\0" b"0000000\0"  # mode 0o644, uid 0, gid 0
_HDR_MTIME = b"00000000000\0"
# typeflag "0" (regular file), empty linkname, magic "ustar\0" + version "00" (POSIX), empty uname,
# gname, devmajor, devminor (no device fields for a regular file) and prefix, padding to 512 bytes
_HDR_TAIL = b"0" + bytes(100) + b"ustar\x0000" + bytes(32 + 32 + 8 + 8 + 155 + 12)
# the checksum is the sum of all header bytes, the checksum field counted as 8 spaces
_HDR_SUM = sum(_HDR_IDS) + sum(_HDR_MTIME) + 8 * ord(" ") + sum(_HDR_TAIL)


def tar_header(name: str, size: int) -> bytes:
    """The header block(s) tarfile writes for a member ``name`` of ``size`` bytes."""
    if len(name) <= _USTAR_NAME_MAX and name.isascii() and size < _USTAR_SIZE_LIMIT:
        raw = name.encode("ascii")
        size_field = b"%011o\0" % size
        chksum = _HDR_SUM + sum(raw) + sum(size_field)
        # tarfile writes the checksum as six octal digits, NUL, and keeps the field's last space
        return b"".join((raw.ljust(_USTAR_NAME_MAX, b"\0"), _HDR_IDS, size_field, _HDR_MTIME,
                         b"%06o\0 " % chksum, _HDR_TAIL))
    # a pax extended header and its records: rare, left to tarfile itself
    return tarinfo(name, size).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


class TarChunks:
    """A tar archive as a list of byte chunks (headers, data, padding), starting at byte ``offset`` of
    its file (a tar's padding to whole records counts from the file's start)."""

    def __init__(self, offset: int = 0) -> None:
        self.chunks: list[bytes] = []
        self.offset = offset

    def add(self, name: str, data: bytes) -> int:
        """Append a member; return the offset of its data."""
        size = len(data)
        header = tar_header(name, size)
        start = self.offset + len(header)
        pad = -size % _BLOCK
        self.chunks += (header, data, bytes(pad)) if pad else (header, data)
        self.offset = start + size + pad
        return start

    def close(self) -> None:
        """The end-of-archive marker (two zero blocks) and zero padding to a whole record."""
        end = self.offset + 2 * _BLOCK
        pad = -end % _RECORD
        self.chunks.append(bytes(2 * _BLOCK + pad))
        self.offset = end + pad
