import AsyncHTTPClient
import FoundationEssentials
import InterlockCore
import InterlockPolicy
import Logging
import NIOCore
import NIOHTTP1

/// Tells people what needs them: a POST of a JSON notification to the configured webhook
/// when a run asks a human (approval, input, a policy approval inside a step) and when a
/// budget stops a run. Best effort and off the run's path: a slow or failing webhook never
/// holds or fails a run (the request is in the store and the API either way).
final class WorkflowNotifier: Sendable {
    private let settings: WebhookSettings?
    private let client: HTTPClient
    private let node: String
    private let logger: Logger

    init(settings: WebhookSettings?, client: HTTPClient, node: String, logger: Logger) {
        self.settings = settings
        self.client = client
        self.node = node
        self.logger = logger
    }

    /// Sends `notification` (with `type`, `node` and `time_ms` added), shaped by the
    /// configured payload template if there is one.
    func send(_ type: String, _ fields: JSONObject, nowMs: Int64) {
        guard let settings else { return }
        var notification = fields
        notification["type"] = .string(type)
        notification["node"] = .string(node)
        notification["time_ms"] = .integer(nowMs)
        let body: JSONValue
        if let template = settings.payload {
            do {
                body = try template.render(["notification": CELValue(json: .object(notification))])
            } catch {
                logger.warning("webhook payload template failed", metadata: ["error": "\(error)"])
                return
            }
        } else {
            body = .object(notification)
        }
        let client = self.client
        let logger = self.logger
        Task {
            var request = HTTPClientRequest(url: settings.url)
            request.method = .POST
            request.headers.add(name: "content-type", value: "application/json")
            for header in settings.headers { request.headers.add(name: header.name, value: header.value.reveal()) }
            request.body = .bytes(ByteBuffer(bytes: JSONWriter.bytes(body)))
            do {
                let response = try await client.execute(request, timeout: .milliseconds(Int64(settings.timeoutMs)))
                _ = try? await response.body.collect(upTo: 64 * 1024)
                if response.status.code >= 300 {
                    logger.warning("webhook refused a notification", metadata: ["interlock.webhook.status": "\(response.status.code)", "interlock.notification": "\(type)"])
                }
            } catch {
                logger.warning("webhook unreachable", metadata: ["interlock.notification": "\(type)", "error": "\(error)"])
            }
        }
    }
}
