// Codable helpers: documents cross the FFI as JSON text, which decodes
// straight into the app's own types.

import Foundation

extension Document {
    /// The fields decoded as `T`.
    public func decode<T: Decodable>(
        _ type: T.Type = T.self, using decoder: JSONDecoder = JSONDecoder()
    ) throws -> T {
        try decoder.decode(T.self, from: Data(fieldsJson.utf8))
    }
}

extension Client {
    /// Replaces the document with `value` encoded as a JSON object.
    @discardableResult
    public func put<T: Encodable>(
        _ key: DocKey, _ value: T, using encoder: JSONEncoder = JSONEncoder()
    ) throws -> Document {
        try put(key: key, fieldsJson: String(decoding: encoder.encode(value), as: UTF8.self))
    }

    /// Changes the fields `value` encodes (a `nil` optional encoded as
    /// `null` removes the field).
    @discardableResult
    public func patch<T: Encodable>(
        _ key: DocKey, _ value: T, using encoder: JSONEncoder = JSONEncoder()
    ) throws -> Document {
        try patch(key: key, fieldsJson: String(decoding: encoder.encode(value), as: UTF8.self))
    }

    /// The documents matching `query`, decoded as `T`.
    public func query<T: Decodable>(
        _ query: Query, as type: T.Type, using decoder: JSONDecoder = JSONDecoder()
    ) throws -> [T] {
        try self.query(query: query).map { try $0.decode(T.self, using: decoder) }
    }
}
