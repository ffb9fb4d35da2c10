//! Parallel xz decoding with bounded memory.
//!
//! liblzma's threaded decoder keeps each block's whole input and output in
//! memory, so with 32 MiB blocks two threads already need ~130 MiB. Here the
//! blocks (whose headers say where they end and how much they unpack to, as
//! every multithreaded xz writes them) are decoded by workers that read
//! their input straight from the file and write their output with `pwrite`
//! at the block's offset, through 1 MiB buffers: a worker holds only its
//! decoder (the LZMA2 dictionary, touched no further than the block's
//! size). Blocks without sizes in their header are decoded in order by the
//! reading thread. liblzma checks each block (header CRC, sizes, check) and
//! the index against the blocks seen; stream header, footer and padding are
//! checked here, so the container is as strict as `xz -t`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, mpsc};

use liblzma_sys as sys;

use super::packed::{Format, Input, UnpackError};

const MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];

/// What workers' decoders may hold in all (dictionaries in use); one block
/// runs whatever it needs. Keeps an unpack within ~100 MiB peak RSS.
const MEMORY_BUDGET: u64 = 80 << 20;
/// Input and output buffers of one worker.
const BUF: usize = 1 << 20;

/// liblzma's `lzma_block` (xz 5.x ABI; the manual bindings lack it).
#[repr(C)]
struct Block {
    version: u32,
    header_size: u32,
    check: sys::lzma_check,
    compressed_size: sys::lzma_vli,
    uncompressed_size: sys::lzma_vli,
    filters: *mut sys::lzma_filter,
    raw_check: [u8; 64],
    reserved_ptr: [*mut libc::c_void; 3],
    reserved_int32: [u32; 2],
    reserved_int64: [sys::lzma_vli; 6],
    reserved_enum: [sys::lzma_check; 4],
    ignore_check: sys::lzma_bool,
    reserved_bool: [sys::lzma_bool; 7],
}

const _: () = assert!(std::mem::size_of::<Block>() == 208);

/// `LZMA_CHECK_CRC64`.
const CHECK_CRC64: sys::lzma_check = 4;

enum IndexHash {}

unsafe extern "C" {
    fn lzma_block_header_decode(
        block: *mut Block,
        allocator: *const sys::lzma_allocator,
        input: *const u8,
    ) -> sys::lzma_ret;
    fn lzma_block_decoder(strm: *mut sys::lzma_stream, block: *mut Block) -> sys::lzma_ret;
    fn lzma_block_unpadded_size(block: *const Block) -> sys::lzma_vli;
    fn lzma_index_hash_init(
        index_hash: *mut IndexHash,
        allocator: *const sys::lzma_allocator,
    ) -> *mut IndexHash;
    fn lzma_index_hash_end(index_hash: *mut IndexHash, allocator: *const sys::lzma_allocator);
    fn lzma_index_hash_append(
        index_hash: *mut IndexHash,
        unpadded_size: sys::lzma_vli,
        uncompressed_size: sys::lzma_vli,
    ) -> sys::lzma_ret;
    fn lzma_index_hash_decode(
        index_hash: *mut IndexHash,
        input: *const u8,
        in_pos: *mut libc::size_t,
        in_size: libc::size_t,
    ) -> sys::lzma_ret;
    fn lzma_index_hash_size(index_hash: *const IndexHash) -> sys::lzma_vli;
}

fn corrupt(detail: impl std::fmt::Display) -> UnpackError {
    UnpackError::Corrupt {
        format: Format::Xz,
        detail: detail.to_string(),
    }
}

fn lzma_error(what: &str, ret: sys::lzma_ret) -> UnpackError {
    let why = match ret {
        sys::LZMA_MEM_ERROR => "cannot allocate memory",
        sys::LZMA_OPTIONS_ERROR => "unsupported options",
        sys::LZMA_DATA_ERROR => "compressed data is corrupt",
        sys::LZMA_BUF_ERROR => "compressed data is truncated",
        sys::LZMA_UNSUPPORTED_CHECK => "unsupported integrity check",
        sys::LZMA_FORMAT_ERROR => "not in the xz format",
        _ => "liblzma error",
    };
    corrupt(format!("{what}: {why} (code {ret})"))
}

/// Reads exactly `buf.len()` bytes at `off`; a short input is a truncated stream.
fn read_exact(src: &dyn Input, buf: &mut [u8], off: u64) -> Result<(), UnpackError> {
    let mut n = 0;
    while n < buf.len() {
        let k = src.read_at(&mut buf[n..], off + n as u64)?;
        if k == 0 {
            return Err(corrupt("truncated: the stream ended early"));
        }
        n += k;
    }
    Ok(())
}

/// Reads the 12-byte stream header or footer at `pos` and decodes its flags
/// with `decode` (`lzma_stream_header_decode` or `lzma_stream_footer_decode`).
fn stream_flags(
    src: &dyn Input,
    pos: u64,
    decode: unsafe extern "C" fn(*mut sys::lzma_stream_flags, *const u8) -> sys::lzma_ret,
    what: &str,
) -> Result<sys::lzma_stream_flags, UnpackError> {
    let mut bytes = [0u8; 12];
    read_exact(src, &mut bytes, pos)?;
    // SAFETY: all-zero is a valid lzma_stream_flags; `bytes` has the 12
    // bytes both functions read.
    let mut flags: sys::lzma_stream_flags = unsafe { std::mem::zeroed() };
    let ret = unsafe { decode(&mut flags, bytes.as_ptr()) };
    if ret != sys::LZMA_OK {
        return Err(lzma_error(what, ret));
    }
    Ok(flags)
}

/// A block header decoded into a `Block` with its own filter array.
struct Header {
    block: Box<Block>,
    filters: Box<[sys::lzma_filter; 5]>,
}

// SAFETY: the raw pointers point into the Header's own boxes.
unsafe impl Send for Header {}

impl Header {
    fn decode(bytes: &[u8], check: sys::lzma_check) -> Result<Header, UnpackError> {
        // SAFETY: all-zero is a valid `lzma_filter` array and `lzma_block`.
        let mut filters: Box<[sys::lzma_filter; 5]> = Box::new(unsafe { std::mem::zeroed() });
        let mut block: Box<Block> = Box::new(unsafe { std::mem::zeroed() });
        block.version = 1;
        block.check = check;
        block.header_size = bytes.len() as u32;
        block.filters = filters.as_mut_ptr();
        // SAFETY: `bytes` holds header_size bytes, the filter array has
        // LZMA_FILTERS_MAX + 1 entries.
        let ret =
            unsafe { lzma_block_header_decode(&mut *block, std::ptr::null(), bytes.as_ptr()) };
        if ret != sys::LZMA_OK {
            return Err(lzma_error("block header", ret));
        }
        Ok(Header { block, filters })
    }

    fn sizes(&self) -> Option<(u64, u64)> {
        let (c, u) = (self.block.compressed_size, self.block.uncompressed_size);
        (c != sys::LZMA_VLI_UNKNOWN && u != sys::LZMA_VLI_UNKNOWN).then_some((c, u))
    }

    /// What the block's decoder needs (mostly its dictionary).
    fn memory(&self) -> u64 {
        // SAFETY: the filter array is terminated and was filled by liblzma.
        unsafe { sys::lzma_raw_decoder_memusage(self.filters.as_ptr()) }
    }
}

impl Drop for Header {
    fn drop(&mut self) {
        // SAFETY: frees the filter options liblzma allocated.
        unsafe { sys::lzma_filters_free(self.filters.as_mut_ptr(), std::ptr::null()) };
    }
}

/// Writes `data` at `off`, leaving holes where 64 KiB chunks are zero and
/// coalescing the rest into one write per run of data; feeds `crc` on the way.
fn write_sparse(
    out: &File,
    data: &[u8],
    off: u64,
    mut crc: Option<&mut crc64::Crc64>,
) -> std::io::Result<()> {
    const CHUNK: usize = crc64::ZERO_RUN;
    let mut run: Option<usize> = None;
    let mut i = 0;
    while i < data.len() {
        let end = (i + CHUNK).min(data.len());
        let chunk = &data[i..end];
        let zero = is_zero(chunk);
        if let Some(c) = crc.as_deref_mut() {
            if zero && chunk.len() == CHUNK {
                c.zero_run();
            } else {
                c.update(chunk);
            }
        }
        if zero {
            if let Some(s) = run.take() {
                out.write_all_at(&data[s..i], off + s as u64)?;
            }
        } else if run.is_none() {
            run = Some(i);
        }
        i = end;
    }
    if let Some(s) = run {
        out.write_all_at(&data[s..], off + s as u64)?;
    }
    Ok(())
}

/// Whether `b` is all zeros: every byte equals the next and the first is
/// zero, which compiles to one `memcmp` (vectorised by libc; a byte loop
/// would cost more CPU than decoding a run of zeros).
fn is_zero(b: &[u8]) -> bool {
    match b.split_first() {
        None => true,
        Some((&first, _)) => first == 0 && b[1..] == b[..b.len() - 1],
    }
}

/// Output written per block: (produced bytes, input consumed after the header).
struct Decoded {
    produced: u64,
    consumed: u64,
    unpadded: u64,
    uncompressed: u64,
}

/// Decodes one block whose data starts at `at` (after its header) into
/// `out` at `out_off`, producing at most `max_out` bytes.
fn decode_block(
    src: &dyn Input,
    mut header: Header,
    at: u64,
    out: &File,
    out_off: u64,
    max_out: u64,
    stop: &AtomicBool,
) -> Result<Decoded, UnpackError> {
    // SAFETY: LZMA_STREAM_INIT is all zeros.
    let mut strm: sys::lzma_stream = unsafe { std::mem::zeroed() };
    struct End<'a>(&'a mut sys::lzma_stream);
    impl Drop for End<'_> {
        fn drop(&mut self) {
            // SAFETY: ends a stream lzma_block_decoder set up (or a zeroed one).
            unsafe { sys::lzma_end(self.0) };
        }
    }
    // CRC-64 (xz's default check) is computed here, faster than liblzma's build.
    let mut crc = (header.block.check == CHECK_CRC64).then(crc64::Crc64::new);
    if crc.is_some() {
        header.block.ignore_check = 1;
    }
    // SAFETY: the block and its filters outlive the decoder (both end here).
    let ret = unsafe { lzma_block_decoder(&mut strm, &mut *header.block) };
    let strm = End(&mut strm);
    if ret != sys::LZMA_OK {
        return Err(lzma_error("block", ret));
    }
    // Reads no further than the block when its size is known.
    let in_end = header
        .sizes()
        .map(|(c, _)| at + c.div_ceil(4) * 4 + check_size(header.block.check));
    let mut inbuf = vec![0u8; BUF];
    let mut outbuf = vec![0u8; BUF];
    let mut fed = at;
    let mut produced = 0u64;
    let mut writeback = crate::io::WritebackTrail::new(out_off);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("stopped").into());
        }
        if strm.0.avail_in == 0 {
            let want = in_end.map_or(BUF as u64, |e| e.saturating_sub(fed).min(BUF as u64));
            let n = if want == 0 {
                0
            } else {
                src.read_at(&mut inbuf[..want as usize], fed)?
            };
            if n == 0 {
                return Err(corrupt("truncated: the stream ended early"));
            }
            fed += n as u64;
            strm.0.next_in = inbuf.as_ptr();
            strm.0.avail_in = n;
        }
        strm.0.next_out = outbuf.as_mut_ptr();
        strm.0.avail_out = outbuf.len();
        // SAFETY: next_in/next_out point into live buffers of the given sizes.
        let ret = unsafe { sys::lzma_code(strm.0, sys::LZMA_RUN) };
        let k = outbuf.len() - strm.0.avail_out;
        if produced + k as u64 > max_out {
            return Err(UnpackError::TooLarge {
                limit: 0,
                what: String::new(),
            });
        }
        if k > 0 {
            write_sparse(out, &outbuf[..k], out_off + produced, crc.as_mut())?;
            produced += k as u64;
            writeback.advance(out, out_off + produced);
        }
        match ret {
            sys::LZMA_OK => {}
            sys::LZMA_STREAM_END => break,
            e => return Err(lzma_error("block", e)),
        }
    }
    writeback.finish(out, out_off + produced);
    let consumed = fed - strm.0.avail_in as u64 - at;
    drop(strm);
    // The decoder copied the stored check into raw_check (little-endian).
    if let Some(c) = crc
        && header.block.raw_check[..8] != c.finish().to_le_bytes()
    {
        return Err(corrupt("a block's CRC64 does not match its data"));
    }
    // SAFETY: the decoder filled in the block's sizes.
    let unpadded = unsafe { lzma_block_unpadded_size(&*header.block) };
    Ok(Decoded {
        produced,
        consumed,
        unpadded,
        uncompressed: header.block.uncompressed_size,
    })
}

fn check_size(check: sys::lzma_check) -> u64 {
    // The sizes of check IDs 0..15 (xz file format 1.0.4, 3.1.6).
    const SIZES: [u64; 16] = [0, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64];
    SIZES.get(check as usize).copied().unwrap_or(0)
}

/// A budget of memory shared by the blocks being decoded.
struct Budget {
    used: Mutex<u64>,
    freed: Condvar,
}

impl Budget {
    fn take(&self, n: u64, stop: &AtomicBool) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used > 0 && *used + n > MEMORY_BUDGET && !stop.load(Ordering::Relaxed) {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += n;
    }
    fn give(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= n;
        self.freed.notify_all();
    }
}

struct Job {
    header: Header,
    at: u64,
    out_off: u64,
    weight: u64,
}

/// Decodes every xz stream of `src` into `out` (holes for zeros), at most
/// `limit` bytes; returns the unpacked size. `progress` gets input offsets.
pub fn decode(
    src: &dyn Input,
    out: &File,
    limit: u64,
    threads: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, UnpackError> {
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<UnpackError>> = Mutex::new(None);
    let budget = Budget {
        used: Mutex::new(0),
        freed: Condvar::new(),
    };
    let fail = |e: UnpackError| {
        let mut f = failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
        stop.store(true, Ordering::Relaxed);
        budget.freed.notify_all();
    };
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Mutex::new(rx);
    let result = std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    };
                    let weight = job.weight;
                    if !stop.load(Ordering::Relaxed)
                        && let Err(e) =
                            decode_block(src, job.header, job.at, out, job.out_off, u64::MAX, &stop)
                        // Stopped by another failure: that one is the error.
                        && !stop.load(Ordering::Relaxed)
                    {
                        fail(e);
                    }
                    budget.give(weight);
                }
            });
        }
        let r = dispatch(src, out, limit, &tx, &budget, &stop, progress);
        if r.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        drop(tx);
        r
    });
    let failed = failure.into_inner().unwrap_or_else(|e| e.into_inner());
    match (result, failed) {
        // A worker's failure explains the dispatcher's stop.
        (_, Some(e)) => Err(e),
        (Err(e), None) => Err(e),
        (Ok(size), None) => Ok(size),
    }
    .map_err(|e| match e {
        UnpackError::TooLarge { .. } => UnpackError::TooLarge {
            limit,
            what: "the decompressed stream is longer".into(),
        },
        e => e,
    })
}

/// Walks the streams in order, sending blocks with known sizes to the
/// workers and decoding the others itself.
fn dispatch(
    src: &dyn Input,
    out: &File,
    limit: u64,
    tx: &mpsc::Sender<Job>,
    budget: &Budget,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, UnpackError> {
    let mut d = Dispatcher {
        src,
        out,
        limit,
        tx,
        budget,
        stop,
        pos: 0,
        opos: 0,
    };
    loop {
        d.stream(progress)?;
        if !d.another_stream()? {
            return Ok(d.opos);
        }
    }
}

/// The state of [`dispatch`]: where it is in the input and in the output.
struct Dispatcher<'a> {
    src: &'a dyn Input,
    out: &'a File,
    limit: u64,
    tx: &'a mpsc::Sender<Job>,
    budget: &'a Budget,
    stop: &'a AtomicBool,
    pos: u64,
    opos: u64,
}

impl Dispatcher<'_> {
    /// One stream: its header, blocks, index and footer.
    fn stream(&mut self, progress: &mut dyn FnMut(u64)) -> Result<(), UnpackError> {
        let src = self.src;
        let flags = stream_flags(
            src,
            self.pos,
            sys::lzma_stream_header_decode,
            "stream header",
        )?;
        self.pos += 12;
        let index =
            IndexGuard(unsafe { lzma_index_hash_init(std::ptr::null_mut(), std::ptr::null()) });
        if index.0.is_null() {
            return Err(lzma_error("index", sys::LZMA_MEM_ERROR));
        }
        // Blocks, up to the index indicator (a zero byte).
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("stopped").into());
            }
            let mut first = [0u8; 1];
            read_exact(src, &mut first, self.pos)?;
            if first[0] == 0 {
                break;
            }
            self.block(first[0], &flags, &index)?;
            progress(self.pos);
        }
        self.index(&index)?;
        // SAFETY: a decoded index hash.
        let index_size = unsafe { lzma_index_hash_size(index.0) };
        let footer = stream_flags(
            src,
            self.pos,
            sys::lzma_stream_footer_decode,
            "stream footer",
        )?;
        // SAFETY: both flags were filled in by liblzma.
        if footer.backward_size != index_size
            || unsafe { sys::lzma_stream_flags_compare(&flags, &footer) } != sys::LZMA_OK
        {
            return Err(corrupt(
                "the stream footer does not match its header and index",
            ));
        }
        self.pos += 12;
        Ok(())
    }

    /// The block whose header starts with the byte `first`: sent to a
    /// worker when its header gives its sizes, else decoded here.
    fn block(
        &mut self,
        first: u8,
        flags: &sys::lzma_stream_flags,
        index: &IndexGuard,
    ) -> Result<(), UnpackError> {
        let size = (first as usize + 1) * 4;
        let mut bytes = vec![0u8; size];
        read_exact(self.src, &mut bytes, self.pos)?;
        let header = Header::decode(&bytes, flags.check)?;
        let at = self.pos + size as u64;
        match header.sizes() {
            Some((c, u)) => {
                if self.opos.saturating_add(u) > self.limit {
                    return Err(UnpackError::TooLarge {
                        limit: self.limit,
                        what: String::new(),
                    });
                }
                let unpadded = size as u64 + c + check_size(flags.check);
                append(index, unpadded, u)?;
                // Pages of the dictionary are touched only as far as the block goes.
                let weight = header.memory().min(u) + 2 * BUF as u64;
                self.budget.take(weight, self.stop);
                let job = Job {
                    header,
                    at,
                    out_off: self.opos,
                    weight,
                };
                if self.tx.send(job).is_err() {
                    return Err(std::io::Error::other("the decoders stopped").into());
                }
                self.pos = at + c.div_ceil(4) * 4 + check_size(flags.check);
                self.opos += u;
            }
            None => {
                let d = decode_block(
                    self.src,
                    header,
                    at,
                    self.out,
                    self.opos,
                    self.limit - self.opos,
                    self.stop,
                )?;
                append(index, d.unpadded, d.uncompressed)?;
                debug_assert_eq!(d.produced, d.uncompressed);
                self.pos = at + d.consumed;
                self.opos += d.produced;
            }
        }
        Ok(())
    }

    /// The index: liblzma compares it with the blocks appended to `index`.
    fn index(&mut self, index: &IndexGuard) -> Result<(), UnpackError> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = self.src.read_at(&mut buf, self.pos)?;
            if n == 0 {
                return Err(corrupt("truncated: the stream ended early"));
            }
            let mut used: libc::size_t = 0;
            // SAFETY: buf holds n bytes.
            let ret = unsafe { lzma_index_hash_decode(index.0, buf.as_ptr(), &mut used, n) };
            self.pos += used as u64;
            match ret {
                sys::LZMA_OK => {}
                sys::LZMA_STREAM_END => return Ok(()),
                e => return Err(lzma_error("index", e)),
            }
        }
    }

    /// Stream padding (NUL bytes in multiples of four), then whether another
    /// stream follows; anything else after the stream is refused.
    fn another_stream(&mut self) -> Result<bool, UnpackError> {
        let src = self.src;
        let mut buf = vec![0u8; 64 << 10];
        let mut padding = 0u64;
        let rest = loop {
            let n = src.read_at(&mut buf, self.pos)?;
            let zeros = buf[..n].iter().take_while(|&&b| b == 0).count();
            padding += zeros as u64;
            self.pos += zeros as u64;
            if n == 0 || zeros < n {
                break &buf[zeros..n];
            }
        };
        if !padding.is_multiple_of(4) {
            return Err(corrupt("stream padding is not a multiple of four bytes"));
        }
        if rest.is_empty() {
            return Ok(false);
        }
        let mut magic = [0u8; 6];
        let mut n = 0;
        while n < magic.len() {
            let k = src.read_at(&mut magic[n..], self.pos + n as u64)?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if magic[..n] != MAGIC[..] {
            let len = src.total_len()?;
            return Err(corrupt(format!(
                "{} bytes of trailing data after the xz stream",
                len - self.pos
            )));
        }
        Ok(true)
    }
}

fn append(index: &IndexGuard, unpadded: u64, uncompressed: u64) -> Result<(), UnpackError> {
    // SAFETY: a live index hash.
    let ret = unsafe { lzma_index_hash_append(index.0, unpadded, uncompressed) };
    if ret != sys::LZMA_OK {
        return Err(lzma_error("index", ret));
    }
    Ok(())
}

struct IndexGuard(*mut IndexHash);

impl Drop for IndexGuard {
    fn drop(&mut self) {
        // SAFETY: from lzma_index_hash_init.
        unsafe { lzma_index_hash_end(self.0, std::ptr::null()) };
    }
}

/// CRC-64/XZ (ECMA-182, reflected) of a block's output, computed here
/// instead of by liblzma (whose bundled build uses a slow generic CRC):
/// slice-by-8 over data, and one table lookup per byte of register for a
/// whole 64 KiB run of zeros, so holes cost almost nothing.
mod crc64 {
    use std::sync::OnceLock;

    const POLY: u64 = 0xC96C_5795_D787_0F42;
    pub const ZERO_RUN: usize = crate::io::sparse::SPARSE_BLOCK;

    struct Tables {
        slice: [[u64; 256]; 8],
        /// `zeros[k][b]`: the register after ZERO_RUN zero bytes from `b << 8k`.
        zeros: [[u64; 256]; 8],
    }

    fn tables() -> &'static Tables {
        static T: OnceLock<Box<Tables>> = OnceLock::new();
        T.get_or_init(|| {
            let mut t = Box::new(Tables {
                slice: [[0; 256]; 8],
                zeros: [[0; 256]; 8],
            });
            for i in 0..256 {
                let mut c = i as u64;
                for _ in 0..8 {
                    c = if c & 1 == 1 { (c >> 1) ^ POLY } else { c >> 1 };
                }
                t.slice[0][i] = c;
            }
            for i in 0..256 {
                for k in 1..8 {
                    let prev = t.slice[k - 1][i];
                    t.slice[k][i] = (prev >> 8) ^ t.slice[0][(prev & 0xFF) as usize];
                }
            }
            // The zero-run operator is linear: its value on each register bit.
            let mut column = [0u64; 64];
            for (bit, col) in column.iter_mut().enumerate() {
                let mut r = 1u64 << bit;
                for _ in 0..ZERO_RUN {
                    r = t.slice[0][(r & 0xFF) as usize] ^ (r >> 8);
                }
                *col = r;
            }
            for k in 0..8 {
                for b in 0..256usize {
                    t.zeros[k][b] = (0..8)
                        .filter(|i| b >> i & 1 == 1)
                        .fold(0, |acc, i| acc ^ column[8 * k + i]);
                }
            }
            t
        })
    }

    /// A running CRC-64 (the register, before the final inversion).
    pub struct Crc64(u64);

    impl Crc64 {
        pub fn new() -> Self {
            tables();
            Crc64(!0)
        }

        pub fn update(&mut self, data: &[u8]) {
            let t = tables();
            let mut r = self.0;
            let mut words = data.chunks_exact(8);
            for w in words.by_ref() {
                let v = r ^ u64::from_le_bytes(w.try_into().unwrap_or_default());
                r = t.slice[7][(v & 0xFF) as usize]
                    ^ t.slice[6][(v >> 8 & 0xFF) as usize]
                    ^ t.slice[5][(v >> 16 & 0xFF) as usize]
                    ^ t.slice[4][(v >> 24 & 0xFF) as usize]
                    ^ t.slice[3][(v >> 32 & 0xFF) as usize]
                    ^ t.slice[2][(v >> 40 & 0xFF) as usize]
                    ^ t.slice[1][(v >> 48 & 0xFF) as usize]
                    ^ t.slice[0][(v >> 56) as usize];
            }
            for &b in words.remainder() {
                r = t.slice[0][((r ^ b as u64) & 0xFF) as usize] ^ (r >> 8);
            }
            self.0 = r;
        }

        /// As `update` with ZERO_RUN zero bytes.
        pub fn zero_run(&mut self) {
            let t = tables();
            let r = self.0;
            self.0 = (0..8).fold(0, |acc, k| acc ^ t.zeros[k][(r >> (8 * k) & 0xFF) as usize]);
        }

        pub fn finish(&self) -> u64 {
            !self.0
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn matches_the_check_value_and_the_zero_run_shortcut() {
            // The catalogue's check value of CRC-64/XZ.
            let mut c = Crc64::new();
            c.update(b"123456789");
            assert_eq!(c.finish(), 0x995D_C9BB_DF19_39FA);
            let mut a = Crc64::new();
            a.update(b"head");
            a.update(&vec![0; ZERO_RUN]);
            a.update(b"tail");
            let mut b = Crc64::new();
            b.update(b"head");
            b.zero_run();
            b.update(b"tail");
            assert_eq!(a.finish(), b.finish());
        }
    }
}
