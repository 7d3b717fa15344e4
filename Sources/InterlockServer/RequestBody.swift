import Hummingbird
import HTTPTypes
import InterlockCore
import NIOCore

extension Request {
    /// The whole body, or 413 `request_too_large` naming the limit (checked against
    /// `Content-Length` first, so an announced oversized body is refused before it is read).
    mutating func collectBody(limit: Int) async throws -> ByteBuffer {
        let tooLarge = GatewayError(kind: .requestTooLarge, code: "request_too_large", message: "The request body is larger than the limit of \(limit) bytes.")
        if let length = headers[.contentLength].flatMap(Int.init), length > limit { throw tooLarge }
        do {
            return try await collectBody(upTo: limit)
        } catch let error as HTTPError where error.status == .contentTooLarge {
            throw tooLarge
        } catch is NIOTooManyBytesError {
            throw tooLarge
        }
    }
}
