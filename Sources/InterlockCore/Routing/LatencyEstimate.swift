/// An exponentially weighted moving average of observed latency, in milliseconds.
public struct LatencyEstimate: Sendable, Equatable {
    public let smoothing: Double
    public private(set) var milliseconds: Double?
    public private(set) var samples: Int = 0

    public init(smoothing: Double = 0.3) {
        precondition(smoothing > 0 && smoothing <= 1, "smoothing must be in (0, 1]")
        self.smoothing = smoothing
    }

    public mutating func observe(milliseconds sample: Double) {
        samples += 1
        if let current = milliseconds {
            milliseconds = current + smoothing * (sample - current)
        } else {
            milliseconds = sample
        }
    }
}
