"""ServiceState: what the status page and /metrics read while the loop writes."""
import threading

from deploy_jetson.state import ServiceState


def _result(decision, probabilities, smoothed=None, quality="good"):
    return {"time": 1.0, "decision": decision, "quality": quality, "latency_ms": 12.5,
            "probabilities": probabilities, "smoothed": smoothed}


def test_gated_windows_without_probabilities_are_recorded():
    state = ServiceState("m", ["a", "b"], clock=lambda: 10.0)
    state.record(_result("no signal", None, None, quality="no signal"))
    snap = state.snapshot()
    assert snap["decision"] == "no signal" and snap["windows"] == 1
    assert state.history()[-1]["probabilities"] == {}


def test_metrics_report_the_smoothed_probabilities():
    state = ServiceState("m", ["a", "b"])
    state.record(_result("a", {"a": 0.9, "b": 0.1}, {"a": 0.6, "b": 0.4}), overlay_png=b"png")
    samples = dict((labels["class"], value) for labels, value in state.metrics()["stetho_probability"][2])
    assert samples == {"a": 0.6, "b": 0.4}
    assert state.latest_png() == b"png"


def test_concurrent_writers_and_readers_keep_counts():
    state = ServiceState("m", ["a", "b"], history_size=50)

    def write():
        for _ in range(500):
            state.record(_result("a", {"a": 1.0, "b": 0.0}, {"a": 1.0, "b": 0.0}))
            state.add_dropped(1)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(200):
        state.snapshot(), state.metrics(), state.history(10)
    for thread in threads:
        thread.join()
    snap = state.snapshot()
    assert snap["windows"] == 2000 and snap["dropped_frames"] == 2000 and len(state.history()) == 50
