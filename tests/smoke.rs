//! `inpaint-worker smoke` against the real services: RabbitMQ, Garage and libtorch on CPU.

use inpaint_e2e::{broker_config, bucket, s3_config};
use inpaint_engine::DeviceSpec;
use inpaint_storage::ObjectRef;
use inpaint_worker::smoke::{SmokeSettings, run_smoke};

#[tokio::test]
async fn smoke_round_trip_writes_the_flipped_image() {
    let settings = SmokeSettings {
        broker: broker_config(),
        storage: s3_config(),
        bucket: bucket(),
        device: DeviceSpec::Cpu,
    };
    let report = run_smoke(&settings).await.expect("smoke run");
    assert_eq!(report.device, "Cpu");
    let storage = s3_config().build().expect("store");
    let output: ObjectRef = report.output.parse().expect("output ref");
    let png = storage.get(&output, None).await.expect("output exists");
    let image = image_dims(&png.bytes);
    assert_eq!(image, (64, 48));
}

fn image_dims(png: &[u8]) -> (u32, u32) {
    // PNG IHDR: width and height are big-endian u32 at bytes 16..24.
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "output is a PNG");
    let be = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    (be(16), be(20))
}
