import Synchronization

/// Tells an agent's open streams to stop at once when the agent is disabled.
///
/// A stream registers a handler with the generation it saw when its call was admitted.
/// `fire` moves to the next generation and runs every handler; registering with an older
/// generation fails, so a stream that opens just after a disable is cut too.
public final class CutOffSignal: Sendable {
    private struct State {
        var generation: UInt64 = 0
        var nextID = 0
        var handlers: [Int: @Sendable () -> Void] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    public var generation: UInt64 { state.withLock { $0.generation } }

    /// Calls `handler` (once, from the thread that disables) when the agent is cut off; nil,
    /// and no call, when it was cut off after `generation` already.
    public func register(since generation: UInt64, _ handler: @escaping @Sendable () -> Void) -> Registration? {
        state.withLock { state -> Registration? in
            guard state.generation == generation else { return nil }
            state.nextID += 1
            state.handlers[state.nextID] = handler
            return Registration(signal: self, id: state.nextID)
        }
    }

    fileprivate func unregister(_ id: Int) {
        _ = state.withLock { $0.handlers.removeValue(forKey: id) }
    }

    /// Cuts off every registered stream.
    func fire() {
        let handlers = state.withLock { state -> [@Sendable () -> Void] in
            state.generation += 1
            defer { state.handlers.removeAll() }
            return Array(state.handlers.values)
        }
        for handler in handlers { handler() }
    }

    /// A stream's registration; `cancel` it when the stream ends.
    public struct Registration: Sendable {
        fileprivate let signal: CutOffSignal
        fileprivate let id: Int

        public func cancel() { signal.unregister(id) }
    }

    /// Waits until the agent is cut off (after `generation`) or the task is cancelled.
    func wait(since generation: UInt64) async {
        let resumed = Mutex<CheckedContinuation<Void, Never>?>(nil)
        let registration = Mutex<Registration?>(nil)
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                resumed.withLock { $0 = continuation }
                let made = register(since: generation) {
                    resumed.withLock { $0.take() }?.resume()
                }
                guard let made else {
                    resumed.withLock { $0.take() }?.resume()
                    return
                }
                registration.withLock { $0 = made }
                if Task.isCancelled { resumed.withLock { $0.take() }?.resume() }
            }
        } onCancel: {
            resumed.withLock { $0.take() }?.resume()
        }
        registration.withLock { $0 }?.cancel()
    }
}
