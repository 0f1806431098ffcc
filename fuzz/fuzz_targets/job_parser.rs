//! Job, cancel and result parsing on arbitrary bytes: never a panic; an accepted job serialises
//! and re-parses to itself, echoes its `job_id` byte for byte, and its admission checks and
//! fingerprint run without panicking.
#![no_main]

use inpaint_job::{CancelRequest, ChainLimits, InpaintJob, InpaintResult, peek_job_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = peek_job_id(data);
    let _ = CancelRequest::from_json(data);
    let _ = InpaintResult::from_json(data);
    if let Ok(job) = InpaintJob::from_json(data) {
        let bytes = job.to_json().expect("an accepted job serialises");
        let again = InpaintJob::from_json(&bytes).expect("a serialised job re-parses");
        assert_eq!(again, job);
        let sent: serde_json::Value = serde_json::from_slice(data).expect("it was JSON");
        assert_eq!(
            sent["job_id"].as_str(),
            Some(job.job_id.to_string().as_str())
        );
        assert_eq!(again.request_sha256(), job.request_sha256());
        let _ = job.check_limits(&ChainLimits::default_chain());
        let _ = job.check_output_not_input();
        for index in 0..job.params.num_images {
            job.output_key(index).expect("a valid job has output keys");
        }
    }
});
