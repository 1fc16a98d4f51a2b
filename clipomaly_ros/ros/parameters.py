"""The node's parameters: every setting of :data:`~clipomaly_ros.core.config.SETTINGS` declared with its type,
range and description, read at configure, checked when set live, and the per-camera mounting overrides."""

from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from ..core.config import RENAMED_SETTINGS, SETTINGS, SETTINGS_BY_NAME, ConfigError, Setting, per_camera_setting
from ..core.method.vocabulary import VocabularyError
from .autoware import autoware_style

PARAMETER_TYPES = {
    "str": ParameterType.PARAMETER_STRING, "int": ParameterType.PARAMETER_INTEGER,
    "float": ParameterType.PARAMETER_DOUBLE, "bool": ParameterType.PARAMETER_BOOL,
    "str_list": ParameterType.PARAMETER_STRING_ARRAY,
}


INT_LIMIT = 2 ** 31 - 1


def descriptor_for(setting: Setting, name: str | None = None) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(name=name or setting.name, type=PARAMETER_TYPES[setting.kind],
                                     description=setting.description, read_only=not setting.live)
    if setting.choices:
        descriptor.additional_constraints = f"one of: {', '.join(setting.choices)}"
    if setting.kind == "int" and (setting.minimum is not None or setting.maximum is not None):
        descriptor.integer_range = [IntegerRange(
            from_value=int(setting.minimum if setting.minimum is not None else -INT_LIMIT),
            to_value=int(setting.maximum if setting.maximum is not None else INT_LIMIT), step=1)]
    if setting.kind == "float" and (setting.minimum is not None or setting.maximum is not None):
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=float(setting.minimum if setting.minimum is not None else -1e300),
            to_value=float(setting.maximum if setting.maximum is not None else 1e300), step=0.0)]
    return descriptor


class NodeParameters:
    """The parameter side of :class:`~clipomaly_ros.ros.node.ClipomalyNode` (a mixin of it)."""

    def _declare_settings(self) -> None:
        """Declare every setting as a parameter (values are read and checked on configure) and the per-camera
        mountings given at start (``front.camera_x``, ...)."""
        overrides = getattr(self, "_parameter_overrides", {})
        renamed = [name for name in overrides if name in RENAMED_SETTINGS]
        if renamed:  # the old name would be ignored: the node would run without what it names
            raise ConfigError(f"parameter(s) {', '.join(sorted(renamed))} renamed: give "
                              f"{', '.join(RENAMED_SETTINGS[name] for name in sorted(renamed))} instead")
        given_managed = overrides.get("managed")
        self.managed = bool(SETTINGS_BY_NAME["managed"].validate(given_managed.value)) \
            if given_managed is not None and given_managed.type_ != Parameter.Type.NOT_SET else False
        for setting in SETTINGS:
            given = overrides.get(setting.name)
            if given is not None and given.type_ != Parameter.Type.NOT_SET:
                setting.validate(given.value)  # before rclpy's own range check, which would not say the range
            default = list(setting.default) if isinstance(setting.default, tuple) else setting.default
            if default == [] and setting.kind == "str_list":
                default = Parameter.Type.STRING_ARRAY  # rclpy would type an empty list as a byte array
            descriptor = descriptor_for(setting)
            if self.managed and setting.name != "managed":
                # an unconfigured managed node takes any setting: _on_set_parameters refuses the ones that are
                # not live while it is configured
                descriptor.read_only = False
            # an empty list: the default, or "[]" in a parameter file, which rcl reads as a value without a type
            unset = setting.kind == "str_list" and (given.type_ == Parameter.Type.NOT_SET if given is not None
                                                    else default == Parameter.Type.STRING_ARRAY)
            if unset:
                # declared by type only it would have no value, and one such parameter empties every answer of
                # get_parameters (`ros2 param dump` wrote nothing); rclpy types an empty list as bytes and a
                # read-only parameter cannot be given one after declaring: writable here, refused when running by
                # _on_set_parameters as every setting that is not live is
                descriptor.read_only = False
            self.declare_parameter(setting.name, Parameter.Type.STRING_ARRAY if unset else default, descriptor)
            if unset:
                self.set_parameters([Parameter(setting.name, Parameter.Type.STRING_ARRAY, [])])
        self.mounting_parameters = []
        for name in sorted(overrides):
            found = per_camera_setting(name)
            if found is not None:
                self.declare_parameter(name, found[1].validate(overrides[name].value), descriptor_for(found[1], name))
                self.mounting_parameters.append(name)

    def _initial_value(self, setting: Setting):
        try:
            return self.get_parameter(setting.name).value
        except ParameterUninitializedException:
            raise ConfigError(f"parameter {setting.name} has no value: set it, or remove it from the parameter file "
                              "to get its default") from None

    def _mountings(self, cameras: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """The per-camera mountings (``front.camera_x``, ...), checked against ``cameras``; a camera without them
        uses the plain ``camera_*`` parameters."""
        mountings: dict[str, dict[str, float]] = {}
        for name in self.mounting_parameters:
            camera, setting = per_camera_setting(name)
            if camera not in cameras:
                raise ConfigError(f"parameter {name} is for camera '{camera}', which is not in cameras "
                                  f"({', '.join(cameras) or 'empty'})")
            mountings.setdefault(camera, {})[setting.name] = setting.validate(self.get_parameter(name).value)
        return mountings

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        changes, mountings = {}, {}
        for parameter in parameters:
            per_camera = per_camera_setting(parameter.name)
            setting = per_camera[1] if per_camera else SETTINGS_BY_NAME.get(parameter.name)
            if setting is None:
                continue
            if parameter.name == "managed":
                return SetParametersResult(successful=False, reason="managed is chosen at start")
            if not setting.live and (self.pipeline is not None or not self.managed):
                return SetParametersResult(successful=False, reason=(
                    f"{parameter.name} cannot change while the node is configured: deactivate and clean it up "
                    "(ros2 lifecycle set NODE cleanup), set it, and configure again" if self.managed else
                    f"{parameter.name} cannot change while running: restart the node with the new value"))
            try:
                value = setting.validate(parameter.value)
            except ConfigError as error:
                return SetParametersResult(successful=False, reason=str(error))
            if per_camera:
                mountings.setdefault(per_camera[0], {})[setting.name] = value
            else:
                changes[parameter.name] = value
        if self.pipeline is None:  # unconfigured: the values are read on configure
            return SetParametersResult(successful=True)
        core = {name: value for name, value in changes.items() if SETTINGS_BY_NAME[name].scope == "core"}
        try:
            if core:
                autoware_style(self.pipeline.config.replace(**core))
                self.pipeline.configure(**core)
        except (ConfigError, VocabularyError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        if "publish_overlay" in changes:
            self.publish_overlay = changes["publish_overlay"]
        for camera, values in mountings.items():
            self.mountings[camera] = {**self.mountings[camera], **values}
        if core:
            self.get_logger().info(f"applied {', '.join(sorted(core))}; the next frame uses them")
        return SetParametersResult(successful=True)
