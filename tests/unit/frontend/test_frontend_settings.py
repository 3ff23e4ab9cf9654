import pytest
from pydantic import ValidationError

from frontend.settings import Settings

pytestmark = pytest.mark.unit


def test_defaults_match_the_documented_ports_and_model():
    settings = Settings()
    assert settings.triton_grpc_url == "127.0.0.1:8001"
    assert settings.model_name == "qwen3_vl"
    assert settings.allow_remote_images is False
    assert settings.cors_origins == []
    assert settings.all_api_keys() == frozenset()


def test_lists_are_read_from_comma_separated_env_vars(monkeypatch):
    monkeypatch.setenv("FRONTEND_API_KEYS", "k1, k2,,")
    monkeypatch.setenv("FRONTEND_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("FRONTEND_MAX_IMAGE_BYTES", "1000")
    settings = Settings()
    assert settings.all_api_keys() == {"k1", "k2"}
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.max_image_bytes == 1000


def test_api_keys_file_adds_one_key_per_line(tmp_path, monkeypatch):
    key_file = tmp_path / "keys"
    key_file.write_text("# team keys\nfile-key-1\n\n  file-key-2  \n")
    monkeypatch.setenv("FRONTEND_API_KEYS", "env-key")
    monkeypatch.setenv("FRONTEND_API_KEYS_FILE", str(key_file))
    assert Settings().all_api_keys() == {"env-key", "file-key-1", "file-key-2"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FRONTEND_API_KEYS_FILE": "/nonexistent/keys"}, "not a readable file"),
        ({"FRONTEND_ALLOW_REMOTE_IMAGES": "true"}, "allow-list"),
        ({"FRONTEND_DEFAULT_MAX_TOKENS": "5000", "FRONTEND_MAX_TOKENS_LIMIT": "100"}, "exceeds"),
        ({"FRONTEND_MAX_IMAGE_BYTES": "100", "FRONTEND_MAX_BODY_BYTES": "10"}, "must not exceed"),
        ({"FRONTEND_REQUEST_TIMEOUT_S": "0"}, "greater than 0"),
        ({"FRONTEND_MAX_BODY_BYTES": "lots"}, "valid integer"),
    ],
)
def test_bad_configuration_is_refused_with_the_variable_named(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_settings_are_read_when_the_app_is_created_not_at_import(monkeypatch):
    monkeypatch.setenv("FRONTEND_MAX_BODY_BYTES", "not-a-number")
    import importlib

    import frontend.app

    importlib.reload(frontend.app)
    with pytest.raises(ValidationError):
        frontend.app.create_app()
