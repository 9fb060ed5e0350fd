"""protoc-gen-grpc_python: the gRPC Python stub generator as a protoc plugin, for buf.

The gRPC Python generator is built into grpcio-tools' protoc (`--grpc_python_out`) and is not
a buf built-in, so this plugin hands buf's request to it: the request's files become a
descriptor set, grpc_tools.protoc generates from it into a temporary folder, and the files it
wrote go back to buf. Used by clients/python/buf.gen.yaml; not part of the SDK.
"""

import pathlib
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main() -> None:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = pathlib.Path(tmp, "request.binpb")
        descriptors.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString()
        )
        out = pathlib.Path(tmp, "out")
        out.mkdir()
        option = f"--grpc_python_out={request.parameter}:{out}" if request.parameter else f"--grpc_python_out={out}"
        code = protoc.main(
            ["grpc_tools.protoc", f"--descriptor_set_in={descriptors}", option, *request.file_to_generate]
        )
        if code != 0:
            response.error = f"grpc_tools.protoc --grpc_python_out exited with {code}"
        else:
            for path in sorted(p for p in out.rglob("*") if p.is_file()):
                response.file.add(name=path.relative_to(out).as_posix(), content=path.read_text())
    sys.stdout.buffer.write(response.SerializeToString())


if __name__ == "__main__":
    main()
