// The Codable helpers of Sources/Tandem/Codable.swift: documents cross the
// FFI as JSON text and decode straight into the app's own types.

import Foundation
import XCTest

import Tandem

final class CodableTests: XCTestCase {
    struct Todo: Codable, Equatable {
        var title: String
        var done: Bool
        var note: String?
    }

    var client: Client!

    override func setUp() async throws {
        client = try await openClient()
    }

    func testPutEncodesAValueThatDecodeAndQueryReadBack() throws {
        let milk = Todo(title: "milk", done: false, note: nil)
        let written = try client.put(task("t1"), milk)
        XCTAssertEqual(written.fieldsJson, #"{"done":false,"title":"milk"}"#, "a nil optional is left out")
        XCTAssertEqual(try written.decode(Todo.self), milk)
        _ = try client.put(task("t2"), Todo(title: "eggs", done: true, note: "free range"))

        XCTAssertEqual(try client.get(key: task("t1"))?.decode(Todo.self), milk)
        let all = try client.query(Query(collection: "tasks"), as: Todo.self)
        XCTAssertEqual(all, [milk, Todo(title: "eggs", done: true, note: "free range")])
        let decoded: Todo = try XCTUnwrap(client.get(key: task("t2"))).decode()
        XCTAssertEqual(decoded.note, "free range", "the type can come from the context")
    }

    func testPatchChangesTheEncodedFieldsAndAnEncodedNullRemovesOne() throws {
        _ = try client.put(task("t1"), Todo(title: "milk", done: false, note: "two litres"))

        struct Done: Encodable { var done = true }
        let done = try client.patch(task("t1"), Done())
        XCTAssertEqual(try done.decode(Todo.self), Todo(title: "milk", done: true, note: "two litres"))

        /// Encodes a nil note as `null`, which removes the field.
        struct ClearNote: Encodable {
            enum CodingKeys: String, CodingKey { case note }
            func encode(to encoder: Encoder) throws {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encodeNil(forKey: .note)
            }
        }
        let cleared = try client.patch(task("t1"), ClearNote())
        XCTAssertEqual(cleared.fieldsJson, #"{"done":true,"title":"milk"}"#)
        XCTAssertEqual(try client.pendingMutations().map(\.operation), ["put", "patch", "patch"])
    }

    func testTheEncoderAndDecoderAreTheCallers() throws {
        struct Event: Codable, Equatable {
            var startsAt: Date
            var roomName: String
        }
        let event = Event(startsAt: Date(timeIntervalSince1970: 1_700_000_000), roomName: "Ada")
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.dateEncodingStrategy = .iso8601
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        decoder.dateDecodingStrategy = .iso8601

        let written = try client.put(DocKey(collection: "events", id: "e1"), event, using: encoder)
        XCTAssertEqual(written.fieldsJson, #"{"room_name":"Ada","starts_at":"2023-11-14T22:13:20Z"}"#)
        XCTAssertEqual(try written.decode(Event.self, using: decoder), event)
        XCTAssertEqual(try client.query(Query(collection: "events"), as: Event.self, using: decoder), [event])
        XCTAssertThrowsError(try written.decode(Event.self), "the default decoder expects other keys") { error in
            XCTAssertTrue(error is DecodingError, "got \(error)")
        }

        struct Rename: Encodable { var roomName = "Grace" }
        let renamed = try client.patch(DocKey(collection: "events", id: "e1"), Rename(), using: encoder)
        XCTAssertEqual(try renamed.decode(Event.self, using: decoder).roomName, "Grace")
    }

    func testAValueThatIsNotAJSONObjectIsInvalidInputAndWritesNothing() throws {
        XCTAssertThrowsError(try client.put(task("t1"), ["a", "b"])) { error in
            guard case TandemError.InvalidInput(code: "not_an_object", reason: _) = error else {
                return XCTFail("expected not_an_object, got \(error)")
            }
        }
        XCTAssertThrowsError(try client.put(task("t1"), "just text")) { error in
            guard case TandemError.InvalidInput(code: "not_an_object", reason: _) = error else {
                return XCTFail("expected not_an_object, got \(error)")
            }
        }
        XCTAssertNil(try client.get(key: task("t1")))
        XCTAssertEqual(try client.pendingMutations(), [])
    }

    func testDecodingIntoAnotherTypeIsADecodingError() throws {
        struct Contact: Decodable { var name: String }
        let written = try client.put(task("t1"), Todo(title: "milk", done: false, note: nil))
        XCTAssertThrowsError(try written.decode(Contact.self)) { error in
            guard case DecodingError.keyNotFound(let key, _) = error else {
                return XCTFail("expected keyNotFound, got \(error)")
            }
            XCTAssertEqual(key.stringValue, "name")
        }
        XCTAssertThrowsError(try client.query(Query(collection: "tasks"), as: Contact.self))
    }
}
