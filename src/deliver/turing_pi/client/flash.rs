//! Flashing a slot: start, streamed upload within the BMC's window, state
//! polling through the CRC read-back, cancel on interrupt, power on.

use super::*;

#[derive(Debug, Clone, Default)]
pub struct FlashOptions {
    /// Skip the BMC's CRC read-back (only when the user asks).
    pub skip_crc: bool,
    /// sha256 of the image, sent when the daemon checks it (>= 2.3.0).
    pub sha256: Option<String>,
}

/// The slowest upload and read-back rate allowed before the flash as a whole
/// is given up (a backstop; stalls are caught sooner by `--bmc-timeout`).
const MIN_RATE: u64 = 256 << 10;

/// Counts the bytes the upload has taken from the image.
struct Counting<R> {
    inner: R,
    taken: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.taken.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Bmc {
    pub fn flash_state(&mut self) -> Result<FlashState> {
        let text = self.get("opt=get&type=flash", "reading the flash state")?;
        FlashState::parse(&text).map_err(|e| anyhow!("{}: {e}", self.host))
    }

    /// How long the BMC may show no progress before imgbuild gives up.
    fn stall_limit(&self) -> Duration {
        self.timeout * 2
    }

    /// Writes `image` to the module in `slot` (1-4), waits through the CRC
    /// read-back, and powers the slot on. `report` gets progress lines.
    pub fn flash(
        &mut self,
        slot: u8,
        image: &Path,
        opts: &FlashOptions,
        mut report: impl FnMut(Phase, u64, u64),
    ) -> Result<()> {
        check_slot(slot)?;
        // bmcd has no busy check: a new start silently cancels a running
        // flash (streaming_data_service.rs:48-80), so imgbuild checks first.
        if let FlashState::Transferring { .. } = self.flash_state()? {
            bail!(
                "{}: the BMC is already flashing a module; wait for it to finish (starting another would cancel it)",
                self.host
            );
        }
        let len = std::fs::metadata(image)
            .with_context(|| format!("reading {}", image.display()))?
            .len();
        let name = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image.img".into());
        let daemon = DaemonVersion::from_about(&self.about()?);
        let mut query = format!(
            "opt=set&type=flash&file={}&length={len}&node={}",
            url_escape(&name),
            slot - 1
        );
        if daemon.checks_sha256() {
            if let Some(sha) = &opts.sha256 {
                query.push_str(&format!("&sha256={}", url_escape(sha)));
            }
        } else {
            tracing::warn!(
                "{}: the BMC's daemon (bmcd {:?}) predates 2.3.0: it does not check the image's sha256{}; the upload is verified by its CRC read-back only",
                self.host,
                daemon.text,
                if opts.skip_crc {
                    " and ignores --skip-crc"
                } else {
                    ""
                }
            );
        }
        if opts.skip_crc {
            query.push_str("&skip_crc");
        }
        let started = self.get(&query, &format!("starting the flash of slot {slot}"))?;
        let handle = response::flash_handle(&started).map_err(|e| anyhow!("{}: {e}", self.host))?;
        let cancel_url = self.url(&format!("/api/bmc/upload/{handle}/cancel"));
        let _cancel = CancelOnInterrupt::new(self.http.clone(), cancel_url, self.token.clone());
        // Upload at once: bmcd's timer fails the transfer with "Send timeout"
        // 10 s after the start (streaming_data_service.rs:76, 86-98).
        if let Err(reason) = self.upload(handle, image, &name, len, &mut report) {
            return Err(self.why_upload_failed(slot, handle, reason));
        }
        self.follow(slot, handle, len, &mut report)?;
        // After any flash bmcd leaves the node off (upgrade_worker.rs:102-108).
        self.set_power(slot, true)
    }

    /// POST /api/bmc/upload/<handle>, streaming the image; the BMC writes as
    /// it receives. Fails when the BMC does not take data for the stall limit.
    fn upload(
        &mut self,
        handle: u32,
        image: &Path,
        name: &str,
        len: u64,
        report: &mut impl FnMut(Phase, u64, u64),
    ) -> Result<()> {
        let file =
            std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
        let taken = Arc::new(AtomicU64::new(0));
        let reader = Counting {
            inner: file,
            taken: taken.clone(),
        };
        let part = reqwest::blocking::multipart::Part::reader_with_length(reader, len)
            .file_name(name.to_string())
            .mime_str("application/octet-stream")?;
        let form = reqwest::blocking::multipart::Form::new().part("file", part);
        let backstop = self.timeout * 4 + Duration::from_secs(len / MIN_RATE);
        let req = self
            .http
            .post(self.url(&format!("/api/bmc/upload/{handle}")))
            .bearer_auth(self.token.as_deref().unwrap_or(""))
            .timeout(backstop)
            .multipart(form);
        let read_limit = self.timeout * 2;
        let (tx, rx) = std::sync::mpsc::channel();
        // Not scoped: if the BMC stalls, the request is left to its backstop
        // timeout while imgbuild reports and moves on.
        std::thread::spawn(move || {
            let _ = tx.send(read_answer(req.send(), read_limit));
        });
        let mut progress = (0u64, 0u64);
        let mut last_change = Instant::now();
        let answer = loop {
            match rx.recv_timeout(Duration::from_millis(300)) {
                Ok(a) => break a,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("{}: the upload ended without an answer", self.host)
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            let mut written = progress.1;
            if let Ok(FlashState::Transferring {
                id,
                written: w,
                size,
            }) = self.flash_state()
                && id.is_none_or(|i| i == handle)
            {
                report(Phase::Writing, w, size.max(len));
                written = w;
            }
            let now = (taken.load(Ordering::Relaxed), written);
            if now != progress {
                progress = now;
                last_change = Instant::now();
            } else if last_change.elapsed() > self.stall_limit() {
                bail!(
                    "the upload made no progress for {} s ({} of {len} bytes sent)",
                    self.stall_limit().as_secs(),
                    now.0
                );
            }
        };
        let a = answer.map_err(|f| {
            // Our own fault first: the image changed while it was being sent.
            let sent = taken.load(Ordering::Relaxed);
            match std::fs::metadata(image).map(|m| m.len()) {
                Ok(now) if now != len => anyhow!(
                    "{} changed size while it was being sent ({len} bytes at the start, {now} now, {sent} sent): is something else writing it?",
                    image.display()
                ),
                _ => self.failure(f, "the upload"),
            }
        })?;
        if a.status != 200 {
            bail!("{} (HTTP {})", self.message(&a.body), a.status);
        }
        Ok(())
    }

    /// Explains a failed upload. bmcd's answer is often generic ("cannot
    /// execute command in current state", legacy.rs:653-683) or missing (a
    /// dropped connection): the flash state tells the real reason.
    fn why_upload_failed(&mut self, slot: u8, handle: u32, reason: anyhow::Error) -> anyhow::Error {
        let deadline = Instant::now() + Duration::from_secs(3).min(self.timeout * 2);
        let state = loop {
            match self.flash_state() {
                Ok(FlashState::Transferring { id, .. })
                    if id.is_none_or(|i| i == handle) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => break other,
            }
        };
        let reason = format!("{reason:#}");
        match state {
            Ok(FlashState::Error(msg)) => anyhow!(
                "{}: flashing slot {slot} failed: {} (the upload was answered: {reason})",
                self.host,
                response::explain_flash_error(slot, &msg)
            ),
            Ok(FlashState::Transferring {
                id: Some(other), ..
            }) if other != handle => self.replaced(slot),
            Ok(FlashState::Transferring { .. }) => {
                // Still waiting for our bytes: release the BMC.
                let _ = self.cancel(handle);
                anyhow!(
                    "{}: the upload to slot {slot} failed ({reason}); cancelled the transfer on the BMC. The module is not usable until it is flashed again",
                    self.host
                )
            }
            _ => anyhow!(
                "{}: the upload to slot {slot} failed ({reason}); the module is not usable until it is flashed again",
                self.host
            ),
        }
    }

    fn cancel(&mut self, handle: u32) -> Result<()> {
        let req = self
            .http
            .get(self.url(&format!("/api/bmc/upload/{handle}/cancel")))
            .bearer_auth(self.token.as_deref().unwrap_or(""));
        self.send(req, "cancelling the transfer").map(|_| ())
    }

    fn replaced(&self, slot: u8) -> anyhow::Error {
        anyhow!(
            "{}: another flash was started on the BMC while slot {slot} was being flashed, which cancelled it (bmcd runs one flash at a time); flash slot {slot} again when the other one is done",
            self.host
        )
    }

    /// Follows the write and the CRC read-back until Done, with deadlines.
    fn follow(
        &mut self,
        slot: u8,
        handle: u32,
        len: u64,
        report: &mut impl FnMut(Phase, u64, u64),
    ) -> Result<()> {
        let backstop = Instant::now() + self.timeout * 4 + Duration::from_secs(2 * len / MIN_RATE);
        let mut last_change = Instant::now();
        let mut seen: Option<FlashState> = None;
        let mut last = u64::MAX;
        let mut verifying = false;
        loop {
            let state = self.flash_state()?;
            if seen.as_ref() != Some(&state) {
                seen = Some(state.clone());
                last_change = Instant::now();
            }
            match state {
                FlashState::Done => return Ok(()),
                FlashState::Error(e) => bail!(
                    "{}: flashing slot {slot} failed: {}",
                    self.host,
                    response::explain_flash_error(slot, &e)
                ),
                // Ready is the state before any transfer since the daemon
                // started (streaming_data_service.rs:44): it restarted.
                FlashState::Ready => bail!(
                    "{}: the BMC's daemon restarted while flashing slot {slot} (its state went back to Ready); the module is not usable until it is flashed again",
                    self.host
                ),
                FlashState::Transferring {
                    id: Some(other), ..
                } if other != handle => {
                    return Err(self.replaced(slot));
                }
                FlashState::Transferring { written, size, .. } => {
                    if written < last && last != u64::MAX {
                        verifying = true;
                    }
                    last = written;
                    let phase = if verifying {
                        Phase::Verifying
                    } else {
                        Phase::Writing
                    };
                    report(phase, written, size.max(len));
                }
            }
            if last_change.elapsed() > self.stall_limit() || Instant::now() > backstop {
                bail!(
                    "{}: the BMC reported no progress flashing slot {slot} for {} s (stuck at {} bytes); check it in its web interface before flashing again (allow longer with --bmc-timeout SECONDS)",
                    self.host,
                    last_change.elapsed().as_secs(),
                    if last == u64::MAX { 0 } else { last }
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// While alive, an interrupt (Ctrl-C) cancels the upload on the BMC first.
struct CancelOnInterrupt;

impl CancelOnInterrupt {
    fn new(http: reqwest::blocking::Client, url: String, token: Option<String>) -> Self {
        crate::util::cleanup::on_interrupt(Box::new(move || {
            let _ = http
                .get(&url)
                .bearer_auth(token.as_deref().unwrap_or(""))
                .timeout(Duration::from_secs(5))
                .send();
        }));
        CancelOnInterrupt
    }
}

impl Drop for CancelOnInterrupt {
    fn drop(&mut self) {
        crate::util::cleanup::clear_interrupt_hook();
    }
}
