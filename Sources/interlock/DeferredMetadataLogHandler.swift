import Logging

/// Wraps swift-log's `StreamLogHandler` so that setting metadata only stores it.
///
/// `StreamLogHandler` renders its whole metadata dictionary to a string every time a key is
/// set. Hummingbird and Interlock set request metadata on every request while almost never
/// logging at the enabled level, so that rendering was a measurable share of request CPU.
/// Here metadata is merged into the message's own metadata only when a line is written.
struct DeferredMetadataLogHandler: LogHandler {
    private var inner: StreamLogHandler
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    init(_ inner: StreamLogHandler) {
        self.inner = inner
    }

    var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var event = event
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let explicit = event.metadata { merged.merge(explicit) { _, new in new } }
        event.metadata = merged.isEmpty ? nil : merged
        inner.log(event: event)
    }
}
