"""Secrets Manager secrets, and `GenerateSecretString` generating values as Secrets Manager would."""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from typing import Any

from local.cloud.resources.resource import Resource, TemplateError, truthy

# Secrets Manager's punctuation set for generated passwords.
PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


@dataclass(frozen=True)
class GenerateSecretString:
    """`GenerateSecretString` with Secrets Manager's defaults."""

    password_length: int = 32
    exclude_characters: str = ""
    exclude_lowercase: bool = False
    exclude_uppercase: bool = False
    exclude_numbers: bool = False
    exclude_punctuation: bool = False
    include_space: bool = False
    require_each_included_type: bool = True
    secret_string_template: str | None = None
    generate_string_key: str | None = None

    @classmethod
    def from_properties(cls, raw: dict[str, Any]) -> GenerateSecretString:
        return cls(
            password_length=int(raw.get("PasswordLength", 32)),
            exclude_characters=raw.get("ExcludeCharacters", ""),
            exclude_lowercase=truthy(raw.get("ExcludeLowercase", False)),
            exclude_uppercase=truthy(raw.get("ExcludeUppercase", False)),
            exclude_numbers=truthy(raw.get("ExcludeNumbers", False)),
            exclude_punctuation=truthy(raw.get("ExcludePunctuation", False)),
            include_space=truthy(raw.get("IncludeSpace", False)),
            require_each_included_type=truthy(raw.get("RequireEachIncludedType", True)),
            secret_string_template=raw.get("SecretStringTemplate"),
            generate_string_key=raw.get("GenerateStringKey"),
        )

    def character_classes(self) -> list[str]:
        classes = []
        for excluded, chars in (
            (self.exclude_lowercase, string.ascii_lowercase),
            (self.exclude_uppercase, string.ascii_uppercase),
            (self.exclude_numbers, string.digits),
            (self.exclude_punctuation, PUNCTUATION),
        ):
            if not excluded:
                classes.append("".join(c for c in chars if c not in self.exclude_characters))
        if self.include_space and " " not in self.exclude_characters:
            classes.append(" ")
        return [c for c in classes if c]

    def generate(self) -> str:
        """A fresh value as Secrets Manager would generate it for this spec (the JSON template filled, if any)."""
        classes = self.character_classes()
        if not classes:
            raise TemplateError("GenerateSecretString excludes every character")
        if self.require_each_included_type and len(classes) > self.password_length:
            raise TemplateError(
                f"PasswordLength {self.password_length} is too short to include each of {len(classes)} character types"
            )
        alphabet = "".join(classes)
        rng = secrets.SystemRandom()
        while True:
            password = "".join(rng.choice(alphabet) for _ in range(self.password_length))
            if not self.require_each_included_type or all(any(c in cls for c in password) for cls in classes):
                break
        if self.generate_string_key is None:
            return password
        if self.secret_string_template is None:
            raise TemplateError("GenerateStringKey needs SecretStringTemplate")
        document = json.loads(self.secret_string_template)
        document[self.generate_string_key] = password
        return json.dumps(document)

    def admits(self, value: str) -> bool:
        """Whether `value` could have come from this spec (length and alphabet); for checks and overrides."""
        if self.generate_string_key is not None:
            value = str(json.loads(value).get(self.generate_string_key, ""))
        alphabet = set("".join(self.character_classes()))
        return len(value) == self.password_length and set(value) <= alphabet


@dataclass(frozen=True)
class Secret:
    logical_id: str
    name: Any  # the Name property, or None
    description: str | None
    generate: GenerateSecretString | None
    secret_string: Any  # a literal SecretString, when given instead of GenerateSecretString


def read_secret(resource: Resource) -> Secret:
    p = resource.properties
    generate = p.get("GenerateSecretString")
    return Secret(
        logical_id=resource.logical_id,
        name=p.get("Name"),
        description=p.get("Description"),
        generate=GenerateSecretString.from_properties(generate) if generate is not None else None,
        secret_string=p.get("SecretString"),
    )
