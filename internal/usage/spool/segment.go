package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

const (
	// MaxRecordBytes is the largest record Append accepts. It also bounds
	// what a damaged length field can make a reader allocate.
	MaxRecordBytes = 16 << 20

	// hdrLen is the frame header: payload length, payload CRC, sequence
	// number, header CRC (see the package comment).
	hdrLen = 20

	segExt = ".seg"

	// readChunk is how much a reader reads ahead in one system call.
	readChunk = 256 << 10

	// maxSeq bounds sequence numbers taken from disk, so that arithmetic on
	// them (seq+1, differences) never wraps, whatever a damaged or hostile
	// file holds.
	maxSeq = math.MaxUint64 >> 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errShort means a file holds fewer bytes than the spool recorded for it
// (cut by something other than the spool); readers treat the missing part
// like damaged data.
var errShort = errors.New("segment file is shorter than recorded")

// segment is one segment file: its first record's sequence number and the
// bytes readers may read (for the active segment: what has been written).
type segment struct {
	base uint64
	size int64
}

func segName(base uint64) string { return fmt.Sprintf("%020d%s", base, segExt) }

func parseSegName(name string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, segExt)
	if !ok || len(digits) != 20 {
		return 0, false
	}
	base, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || base >= maxSeq {
		return 0, false
	}
	return base, true
}

// listSegments returns dir's segment files in order.
func listSegments(dir string) ([]segment, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var segs []segment
	for _, e := range ents {
		base, ok := parseSegName(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return nil, err
		}
		segs = append(segs, segment{base: base, size: fi.Size()})
	}
	slices.SortFunc(segs, func(a, b segment) int {
		switch {
		case a.base < b.base:
			return -1
		case a.base > b.base:
			return 1
		}
		return 0
	})
	return segs, nil
}

// appendFrame encodes one record; sum is the payload's CRC-32C, computed by
// the caller outside any lock.
func appendFrame(b []byte, seq uint64, sum uint32, rec []byte) []byte {
	// Built in b itself: a header array would escape (crc32 calls through
	// a function value) and cost an allocation per record.
	at := len(b)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(rec)))
	b = binary.LittleEndian.AppendUint32(b, sum)
	b = binary.LittleEndian.AppendUint64(b, seq)
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[at:at+16], castagnoli))
	return append(b, rec...)
}

// frameSize and frameSeq read frames the spool encoded itself (in memory,
// never from disk, so they need no checks).
func frameSize(b []byte) int   { return hdrLen + int(binary.LittleEndian.Uint32(b)) }
func frameSeq(b []byte) uint64 { return binary.LittleEndian.Uint64(b[8:]) }

type frameStatus int

const (
	frameOK frameStatus = iota
	// frameBadPayload: the header is intact (its CRC matches) but the
	// payload is not; the frame can be skipped by its length.
	frameBadPayload
	// frameBad: nothing at this offset can be trusted; resynchronize.
	frameBad
)

// frame is one decoded frame. payload is valid until the decoder reads
// again.
type frame struct {
	seq     uint64
	size    int64 // header and payload
	payload []byte
}

// decoder reads frames from one segment file through a read-ahead buffer.
// Its allocations are bounded by the file's size and MaxRecordBytes, never
// by what a length field claims.
type decoder struct {
	f      *os.File
	base   uint64
	buf    []byte
	bufOff int64 // file offset of buf[0]
	// cut says the file was found to end at eof, before the size the
	// spool recorded (it was cut behind the spool's back).
	cut bool
	eof int64
}

// use points the decoder at segment base in dir, reopening only when it
// changes.
func (d *decoder) use(dir string, base uint64) error {
	if d.f != nil && d.base == base {
		return nil
	}
	d.close()
	f, err := os.Open(filepath.Join(dir, segName(base)))
	if err != nil {
		return err
	}
	d.f, d.base = f, base
	return nil
}

func (d *decoder) close() {
	if d.f != nil {
		_ = d.f.Close() // read-only
		d.f = nil
	}
	d.buf, d.bufOff, d.cut, d.eof = d.buf[:0], 0, false, 0
}

// window returns the n bytes at off, reading ahead up to limit when they are
// not buffered. The caller ensures off+n <= limit.
func (d *decoder) window(off int64, n int, limit int64) ([]byte, error) {
	if off >= d.bufOff && off+int64(n) <= d.bufOff+int64(len(d.buf)) {
		i := off - d.bufOff
		return d.buf[i : i+int64(n)], nil
	}
	want := min(int64(max(n, readChunk)), limit-off)
	if int64(cap(d.buf)) < want {
		d.buf = make([]byte, want)
	}
	got, err := d.f.ReadAt(d.buf[:want], off)
	d.buf, d.bufOff = d.buf[:got], off
	if got < int(want) && errors.Is(err, io.EOF) {
		d.cut, d.eof = true, off+int64(got)
	}
	if got < n {
		if err == nil || errors.Is(err, io.EOF) {
			return nil, errShort
		}
		return nil, err
	}
	return d.buf[:n], nil
}

// frameAt decodes the frame at off. A frame is valid only if its sequence
// number is in [lo, hi): below lo it would go backwards, at or above hi it
// claims records that belong to a later segment or were never written.
func (d *decoder) frameAt(off int64, lo, hi uint64, limit int64) (frame, frameStatus, error) {
	limit = d.clamp(limit)
	if limit-off < hdrLen {
		return frame{}, frameBad, nil
	}
	h, err := d.window(off, hdrLen, limit)
	if err != nil {
		return frame{}, frameBad, ignoreShort(err)
	}
	if crc32.Checksum(h[:16], castagnoli) != binary.LittleEndian.Uint32(h[16:]) {
		return frame{}, frameBad, nil
	}
	n := binary.LittleEndian.Uint32(h[0:])
	sum := binary.LittleEndian.Uint32(h[4:])
	seq := binary.LittleEndian.Uint64(h[8:])
	if n > MaxRecordBytes || int64(n) > limit-off-hdrLen || seq < lo || seq >= hi {
		return frame{}, frameBad, nil
	}
	b, err := d.window(off, hdrLen+int(n), limit)
	if err != nil {
		return frame{}, frameBad, ignoreShort(err)
	}
	f := frame{seq: seq, size: hdrLen + int64(n), payload: b[hdrLen:]}
	if crc32.Checksum(f.payload, castagnoli) != sum {
		return f, frameBadPayload, nil
	}
	return f, frameOK, nil
}

// resync finds the first intact frame at or after off (a damaged length
// field leaves no other way to find where the next frame starts). It tries
// every offset, which costs a header checksum per byte: slow only on
// damaged data, and bounded by the segment's size.
func (d *decoder) resync(off int64, lo, hi uint64, limit int64) (int64, frame, bool, error) {
	for ; off+hdrLen <= d.clamp(limit); off++ {
		f, st, err := d.frameAt(off, lo, hi, limit)
		if err != nil {
			return 0, frame{}, false, err
		}
		if st == frameOK {
			return off, f, true, nil
		}
	}
	return limit, frame{}, false, nil
}

// clamp lowers limit to where the file was found to end.
func (d *decoder) clamp(limit int64) int64 {
	if d.cut {
		return min(limit, d.eof)
	}
	return limit
}

func ignoreShort(err error) error {
	if errors.Is(err, errShort) {
		return nil
	}
	return err
}

// scanTail finds where the last segment's intact records end, so that a
// tail torn by a crash mid-write can be cut off: the offset after the last
// intact frame and the sequence number after it. Damage followed by intact
// frames is kept (readers skip and count it); only what no intact frame
// follows is the torn tail.
func scanTail(d *decoder, g segment) (end int64, next uint64, err error) {
	off, lo := int64(0), g.base
	end, next = 0, g.base
	for off < g.size {
		f, st, err := d.frameAt(off, lo, maxSeq, g.size)
		if err != nil {
			return 0, 0, err
		}
		switch st {
		case frameOK:
			off += f.size
			lo = f.seq + 1
			end, next = off, lo
			continue
		case frameBadPayload:
			off += f.size
			lo = f.seq + 1
			continue
		}
		p, _, ok, err := d.resync(off+1, lo, maxSeq, g.size)
		if err != nil {
			return 0, 0, err
		}
		if !ok {
			break
		}
		off = p
	}
	return end, next, nil
}

// syncDir makes the creation, removal or renaming of files in dir durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
