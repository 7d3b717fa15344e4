import InterlockCore
import InterlockRuntime
import Testing

/// The limiter's fast path for deployments without per-minute limits must still honour an
/// upstream's "slow down", and limited ones must still count.
@Suite struct AsyncRateLimiterTests {
    @Test func anUnlimitedLimiterAdmitsUntilThrottledThenWaitsOutTheThrottle() async throws {
        let limiter = AsyncRateLimiter(name: "d", limits: RateLimits(), queue: AdmissionQueuePolicy(maxDepth: 4, maxWait: .seconds(1)))
        for _ in 0..<1000 { #expect(limiter.acquireImmediately(tokens: 1_000_000)) }
        limiter.reconcile(estimatedTokens: 10, actualTokens: 1_000_000)
        limiter.throttle(for: .milliseconds(200))
        #expect(!limiter.acquireImmediately(tokens: 1))
        #expect(limiter.isThrottled())
        try await Task.sleep(for: .milliseconds(250))
        #expect(limiter.acquireImmediately(tokens: 1))
    }

    @Test func aLimitedLimiterStillCounts() {
        let limiter = AsyncRateLimiter(name: "d", limits: RateLimits(requestsPerMinute: 3), queue: AdmissionQueuePolicy(maxDepth: 4, maxWait: .seconds(1)))
        #expect((0..<3).allSatisfy { _ in limiter.acquireImmediately(tokens: 1) })
        #expect(!limiter.acquireImmediately(tokens: 1))
    }
}
